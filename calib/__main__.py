"""`python -m calib`: INT8-calibrate an engine folder's vision graph on real images, in place.

    python -m calib --engine engines/tiny --images calib/images
    python -m calib --engine engines/flash-vl-2b --images ~/frames.mp4 --max 64 --method entropy

The folder keeps its fp32 vision graph (the manifest's `graphs.vision_fp32`), so it can be
calibrated again; `graphs.vision` becomes vision.int8.onnx.  See calib/calibrate.py for what is
written, and `python -m calib.report` to measure the result against an fp32 folder.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from runtime.extras import exit_unless_installed

exit_unless_installed("export", "python -m calib")  # before the imports that need onnx

from calib.calibrate import DEFAULT_IMAGES, METHODS, CalibConfig, calibrate
from export import progress
from runtime import stop_signals
from runtime.cli_output import error_line
from runtime.cli_parser import CliParser
from runtime.errors import FlashVLError
from runtime.stop_signals import describe, exit_code, stopping_on_signals


def main(argv=None) -> int:
    ap = CliParser(prog="python -m calib", description=__doc__)
    ap.add_argument("--engine", required=True, type=Path, help="engine folder with an fp32 vision graph")
    ap.add_argument("--images", type=Path, default=DEFAULT_IMAGES,
                    help="a folder of images, one image, or a video file (default: calib/images)")
    ap.add_argument("--max", type=int, dest="max_images", help="use at most this many images (or video frames)")
    ap.add_argument("--method", choices=METHODS, default="percentile",
                    help="range estimator (default percentile 99.999)")
    args = ap.parse_args(argv)
    t = time.perf_counter()
    try:
        with stopping_on_signals():  # SIGTERM/SIGHUP, like Ctrl-C, leave the folder as it was
            manifest = calibrate(args.engine, CalibConfig(args.images, args.max_images, args.method))
    except KeyboardInterrupt as e:
        print(f"{describe(e)}: {args.engine} is as it was before", file=sys.stderr)
        return exit_code(e)
    except FlashVLError as e:
        print(error_line(e), file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.filename or args.engine}: {e.strerror or e}; check the path, its permissions and free space",
              file=sys.stderr)
        return 2
    a = manifest.graphs.vision.activations
    progress.say(f"calibrated {args.engine} on {a.images} images ({a.method}) in {time.perf_counter() - t:.1f}s: "
                 f"{manifest.graphs.vision.file}, {a.record}, {a.trt_cache}")
    return 0


if __name__ == "__main__":
    stop_signals.exit(main())  # a run stopped by SIGTERM (or Ctrl-C, SIGHUP) ends by that signal
