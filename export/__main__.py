"""`python -m export`: write an engine folder from a preset and weights.

    python -m export --preset tiny --random-weights --seed 0 --out engines/tiny
    python -m export --preset flash-vl-2b-static --checkpoint ~/Flash-VL-2B --out engines/flash-vl-2b
    python -m export --preset flash-vl-2b-static --vision DIR --llm DIR --adapter FILE --out DIR
    python -m export --preset tiny --random-weights --precision int4 --out engines/tiny-int4

Precision (per graph, recorded in the manifest): --precision fp32|fp16|int8|int4 sets both graphs
(int4 is weight-only, for the decoder; the vision graph then gets int8); --vision-precision and
--decoder-precision override one.  An int8 vision graph is calibrated on --calib-images (default:
the project's own set in calib/images).  int8/int4 decoder weights are symmetric, per channel
(int8) or in blocks of 32 (int4), as standard QDQ ONNX (TensorRT and ONNX Runtime).
--flavour onnxruntime writes ONNX Runtime's fused CPU decoder instead (GroupQueryAttention with an
in-place KV cache, SkipSimplifiedLayerNormalization, one QKV projection; MatMulNBits weights when
int8/int4): the fastest on the CPU, ONNX Runtime only; for the CPU-only device.
--compute fp16 quantizes an fp16 decoder instead (W8A16 / W4A16: fp16 activations and KV cache),
the form TensorRT's weight-only GEMMs run fastest on a Jetson.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from runtime.extras import exit_unless_installed

exit_unless_installed("export", "python -m export")  # before the imports that need torch and onnx

from calib.calibrate import DEFAULT_IMAGES, METHODS, CalibConfig
from calib.sources import count_images
from export import progress
from export.build import DEFAULT_MAX_BATCH, WeightSource, check_max_batch, export_engine, with_max_seq_len
from export.precision import DECODER_PRECISIONS, plan_from_args
from export.presets import PRESETS, get_preset
from export.weights import CheckpointArgs
from runtime import stop_signals
from runtime.cli_output import error_line
from runtime.cli_parser import CliParser
from runtime.errors import FlashVLError
from runtime.manifest import FLAVOURS
from runtime.stop_signals import describe, exit_code, stopping_on_signals


MAX_CONTEXT = 32768  # Qwen2-1.5B's max_position_embeddings: positions past it were never trained


def main(argv=None) -> int:
    ap = CliParser(prog="python -m export", description=__doc__)
    ap.add_argument("--preset", required=True, choices=sorted(PRESETS))
    ap.add_argument("--out", required=True, type=Path, help="engine folder to write")
    w = ap.add_argument_group("weights (one of)")
    w.add_argument("--random-weights", action="store_true", help="seeded random weights of the real shapes")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--checkpoint", type=Path, help="combined Flash-VL folder (config.json + *.safetensors)")
    w.add_argument("--vision", type=Path, help="SigLIP vision folder")
    w.add_argument("--llm", type=Path, help="Qwen2 folder (with tokenizer.json)")
    w.add_argument("--adapter", type=Path, help="adapter safetensors file")
    ap.add_argument("--max-seq-len", type=int, help="context window to build for (default: the preset's)")
    ap.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                    help=f"sequences one decoder call may carry, recorded in the manifest (default "
                         f"{DEFAULT_MAX_BATCH}; the runtime batches concurrent requests up to it)")
    q = ap.add_argument_group("precision")
    q.add_argument("--precision", choices=DECODER_PRECISIONS, help="both graphs (default fp32)")
    q.add_argument("--vision-precision", choices=DECODER_PRECISIONS, help="fp32, fp16 or int8 (calibrated)")
    q.add_argument("--decoder-precision", choices=DECODER_PRECISIONS)
    q.add_argument("--flavour", choices=FLAVOURS, default="standard",
                   help="decoder graph: standard ONNX for TensorRT and ONNX Runtime (default), or onnxruntime: "
                        "ONNX Runtime's fused CPU ops (fp32/int8/int4; fastest on a CPU, ONNX Runtime only)")
    q.add_argument("--block-size", type=int, help="weights per scale along the input (0: per channel)")
    q.add_argument("--quantize-lm-head", action="store_true", help="quantize the logits projection too")
    q.add_argument("--compute", choices=("fp32", "fp16"), default="fp32",
                   help="int8/int4 decoder: activations, KV cache and dequantized weights in fp32 (default) or "
                        "fp16 (W8A16/W4A16: what TensorRT's weight-only GEMMs run fastest, e.g. on Jetson)")
    q.add_argument("--calib-images", type=Path, default=DEFAULT_IMAGES, help="folder, image or video")
    q.add_argument("--calib-max", type=int, help="use at most this many calibration images (or video frames)")
    q.add_argument("--calib-method", choices=METHODS, default="percentile")
    args = ap.parse_args(argv)

    ckpt = CheckpointArgs(args.checkpoint, args.vision, args.llm, args.adapter)
    if args.random_weights == bool(ckpt.pairs()):
        ap.error("give --random-weights, or --checkpoint DIR, or --vision DIR --llm DIR --adapter FILE")
    if args.max_seq_len is not None and not 2 <= args.max_seq_len <= MAX_CONTEXT:
        ap.error(f"--max-seq-len must be in 2..{MAX_CONTEXT} (Qwen2's trained context; the KV cache and RoPE tables "
                 f"grow with it), got {args.max_seq_len}")
    source = WeightSource(seed=args.seed) if args.random_weights else WeightSource(checkpoint=ckpt)
    t = time.perf_counter()
    try:
        plan = plan_from_args(args.precision, args.vision_precision, args.decoder_precision, flavour=args.flavour,
                              block_size=args.block_size, lm_head=args.quantize_lm_head, compute=args.compute,
                              calib=CalibConfig(args.calib_images, args.calib_max, args.calib_method))
        if plan.vision == "int8":
            count_images(args.calib_images, args.calib_max)  # a bad --calib-images fails now, not after the export
        progress.say(f"precision: {plan.describe()}")
        preset = with_max_seq_len(get_preset(args.preset), args.max_seq_len)
        with stopping_on_signals():  # SIGTERM/SIGHUP, like Ctrl-C, remove the half-built folder on the way out
            manifest = export_engine(preset, source, args.out, plan, check_max_batch(args.max_batch))
    except KeyboardInterrupt as e:
        print(f"{describe(e)}: {args.out} is as it was before the export", file=sys.stderr)
        return exit_code(e)
    except FlashVLError as e:
        print(error_line(e), file=sys.stderr)
        return 2
    except OSError as e:  # disk full, read-only or unwritable --out, permissions: the user's to fix
        print(f"error: {e.filename or args.out}: {e.strerror or e}; check the path, its permissions and free space",
              file=sys.stderr)
        return 2
    total = sum(f.bytes for f in manifest.files)
    progress.say(f"wrote {args.out} ({total / 1e6:.1f} MB) in {time.perf_counter() - t:.1f}s")
    return 0


if __name__ == "__main__":
    stop_signals.exit(main())  # a run stopped by SIGTERM (or Ctrl-C, SIGHUP) ends by that signal
