"""`python -m export.trt`: build TensorRT plans on the target GPU, or check them against the ONNX.

    python -m export.trt --engine engines/flash-vl-2b                     build vision.plan + decoder.plan
    python -m export.trt --engine DIR --max-seq-len 1024 --low-memory     8 GB Orin Nano
    python -m export.trt check --engine DIR                               TensorRT vs ONNX Runtime, per output

Build options:
    --max-seq-len N     context window of the decoder profiles (default: the export's)
    --max-batch B       sequences one decode step carries (default: what the export allows, its
                        graphs.decoder.max_batch; more is refused: re-export with --max-batch)
    --vision-max-batch  tiles per vision run (default: 1 static, all tiles + thumbnail dynamic)
    --workspace MB      builder workspace limit (default: TensorRT's; 512 with --low-memory)
    --timing-cache F    timing cache to read and update (default: DIR/timing.cache)
    --low-memory        settings for 8 GB boards (see export/trt/build.py)
    --opt-level 0..5    builder optimization level (default 3; 1 with --low-memory)

A user mistake, a missing tensorrt or GPU prints one `error:` line and exits 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

from runtime.cli_output import error_line
from runtime.cli_parser import CliParser
from runtime.errors import FlashVLError


def parse_build_args(argv):
    ap = CliParser(prog="python -m export.trt", description=__doc__)
    ap.add_argument("--engine", required=True, type=Path, help="engine folder written by `python -m export`")
    ap.add_argument("--max-seq-len", type=int, default=None)
    ap.add_argument("--max-batch", type=int, default=None)
    ap.add_argument("--vision-max-batch", type=int, default=None)
    ap.add_argument("--workspace", type=int, default=0, metavar="MB")
    ap.add_argument("--timing-cache", type=Path, default=None, metavar="FILE")
    ap.add_argument("--low-memory", action="store_true")
    ap.add_argument("--opt-level", type=int, default=None)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["check"]:
        from export.trt.check import main as check_main

        return check_main(argv[1:])
    if argv[:1] == ["build"]:
        argv = argv[1:]
    args = parse_build_args(argv)
    try:
        from export.trt.build import BuildConfig, build_plans

        cfg = BuildConfig(max_seq_len=args.max_seq_len, max_batch=args.max_batch,
                          vision_max_batch=args.vision_max_batch, workspace_mb=args.workspace,
                          timing_cache=args.timing_cache, low_memory=args.low_memory, opt_level=args.opt_level)
        manifest = build_plans(args.engine, cfg)
    except FlashVLError as e:
        print(error_line(e), file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.filename or args.engine}: {e.strerror or e}; check the engine folder's files and "
              f"permissions", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; manifest.json is unchanged (plans written so far are not listed in it)",
              file=sys.stderr)
        return 130
    t = manifest.trt
    print(f"{args.engine}: vision.plan + decoder.plan for {t.gpu_name} (sm {t.compute_capability}), TensorRT "
          f"{t.tensorrt_version}, context {t.max_seq_len}, {t.max_batch} sequence(s) per decode step; run with "
          f"`python -m runtime.run --engine {args.engine} --backend trt --image IMAGE`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
