"""Draw a sample caption onto samples/street.jpg -> docs/camera_overlay.png (what --save videos look like).

    python docs/make_overlay_example.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a plain script from anywhere, no install needed

from runtime.video.overlay import draw_caption  # noqa: E402

CAPTION = ("A person in a red jacket crosses a busy street in front of a yellow taxi "
           "while a cyclist waits at the light.")
HEADER = "#7  14:03:07"


def main() -> None:
    src, dst = ROOT / "samples" / "street.jpg", ROOT / "docs" / "camera_overlay.png"
    image = cv2.imread(str(src))  # [H, W, 3] BGR uint8
    if image is None:
        sys.exit(f"error: {src}: cannot read the sample image; restore it with git checkout {src.name}")
    if not cv2.imwrite(str(dst), draw_caption(image, CAPTION, HEADER)):
        sys.exit(f"error: {dst}: cannot write the PNG; check the folder's permissions")
    print(f"wrote {dst.relative_to(ROOT)} ({image.shape[1]}x{image.shape[0]})")


if __name__ == "__main__":
    main()
