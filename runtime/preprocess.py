"""Vision-graph pixels from RGB: resize exactly like PIL, normalise.

    resize_pil_bicubic(rgb, height, width)
        RGB uint8 [H, W, 3] -> RGB uint8 [height, width, 3], bit-exact with
        PIL's `Image.resize((width, height), Image.BICUBIC)`
    preprocess(rgb, spec)
        RGB uint8 [H, W, 3] -> float32 [1, 3, spec.height, spec.width], the same
        numbers as the Hugging Face SigLIP processor (PIL backend)
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from runtime.errors import ImageError
from runtime.manifest import PreprocessSpec

# ----------------------------------------------------------------------------- resize

PRECISION_BITS = 32 - 8 - 2  # PIL's fixed point for 8-bit images: 22 fraction bits


def _bicubic(x: np.ndarray) -> np.ndarray:
    """PIL's bicubic_filter (a = -0.5), with its operation order so doubles match bit for bit."""
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The tap tables, cached for the sizes cameras and photos repeat (a few MB at most each)."""
    return _cached_taps(in_size, out_size) if in_size <= 8192 else _compute_taps(in_size, out_size)


@lru_cache(maxsize=64)
def _cached_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    return _compute_taps(in_size, out_size)


def _compute_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """PIL's precompute_coeffs + normalize_coeffs_8bpc for one axis.

    -> idx int64 [out_size, ksize] source indices, k int32 [out_size, ksize]
    fixed-point weights; taps past PIL's window carry weight 0 and a clamped index.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale  # BICUBIC support 2, widened when shrinking (antialias)
    ksize = int(np.ceil(support)) * 2 + 1
    center = (np.arange(out_size) + 0.5) * scale  # [out]
    xmin = np.maximum((center - support + 0.5).astype(np.int64), 0)  # [out], C's (int) truncates
    count = np.minimum((center + support + 0.5).astype(np.int64), in_size) - xmin  # [out]
    j = np.arange(ksize)  # [ksize]
    src = xmin[:, None] + j[None, :]  # [out, ksize]
    w = _bicubic((src - center[:, None] + 0.5) * (1.0 / filterscale))  # [out, ksize]
    w = np.where(j[None, :] < count[:, None], w, 0.0)
    ww = np.zeros(out_size)
    for t in range(ksize):  # PIL sums left to right; np.sum would pair terms differently
        ww = ww + w[:, t]
    w = w / np.where(ww != 0.0, ww, 1.0)[:, None]
    fixed = w * (1 << PRECISION_BITS)
    k = np.where(w < 0, fixed - 0.5, fixed + 0.5).astype(np.int32)  # [out, ksize], rounds half away from 0
    idx = np.minimum(src, in_size - 1)  # [out, ksize]
    idx.setflags(write=False)
    k.setflags(write=False)
    return idx, k


def _resample_rows(src: np.ndarray, idx: np.ndarray, k: np.ndarray) -> np.ndarray:
    """One PIL 8-bit pass along axis 0: uint8 [n_in, m] -> uint8 [n_out, m].

    Integer sums as in ImagingResample*_8bpc: they stay far inside int32 since
    the weights' absolute sum is below 1.3 * 2**22.
    """
    acc = np.full((idx.shape[0], src.shape[1]), 1 << (PRECISION_BITS - 1), np.int32)  # [n_out, m]
    for t in range(idx.shape[1]):
        acc += src[idx[:, t]] * k[:, t, None]  # [n_out, m]
    return np.clip(acc >> PRECISION_BITS, 0, 255).astype(np.uint8)  # [n_out, m]


def _resize_width(img: np.ndarray, width: int) -> np.ndarray:
    """Horizontal pass: uint8 [H, W, 3] -> uint8 [H, width, 3]."""
    in_h, in_w, _ = img.shape
    # cv2.transpose is ~5x faster than NumPy's copy of a strided transpose.
    t = cv2.transpose(img).reshape(in_w, in_h * 3)  # [W, H*3]
    t = _resample_rows(t, *_taps(in_w, width))  # [width, H*3]
    return cv2.transpose(t.reshape(width, in_h, 3))  # [H, width, 3]


def _resize_height(img: np.ndarray, height: int) -> np.ndarray:
    """Vertical pass: uint8 [H, W, 3] -> uint8 [height, W, 3]."""
    in_h, in_w, _ = img.shape
    out = _resample_rows(img.reshape(in_h, in_w * 3), *_taps(in_h, height))  # [height, W*3]
    return out.reshape(height, in_w, 3)  # [height, W, 3]


def resize_pil_bicubic(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> RGB uint8 [height, width, 3], as PIL's antialiased BICUBIC.

    Two passes, each rounded and clipped to uint8, so their order matters.
    Like PIL, an axis whose size does not change is not resampled at all, and a
    same-size resize is a copy.
    """
    if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
            and rgb.size > 0):
        got = f"{rgb.dtype} {tuple(rgb.shape)}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ImageError(
            f"resize_pil_bicubic: expected an RGB uint8 array [H, W, 3] with H, W >= 1, got {got}; "
            f"convert it with load_image first")
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ImageError(f"resize_pil_bicubic: {name} must be an integer >= 1, got {v!r}")
    in_h, in_w, _ = rgb.shape
    if (height, width) == (in_h, in_w):
        return np.array(rgb, order="C")
    if width == in_w:
        return np.ascontiguousarray(_resize_height(rgb, height))
    if height == in_h:
        return _resize_width(rgb, width)
    # Pillow 13 goes vertical-first when the height shrinks by more than twice as
    # many pixels as the width; older Pillow always went horizontal-first.  Its
    # new Resample.c was not at hand, so the rule comes from probing Pillow 13.0
    # on ~2,000 size pairs, exact at the boundary (a tie goes horizontal-first).
    if height < in_h and in_h - height > 2 * (in_w - width):
        return _resize_width(_resize_height(rgb, height), width)
    return _resize_height(_resize_width(rgb, width), height)


# ----------------------------------------------------------------------------- preprocess


@lru_cache(maxsize=8)
def _normalize_table(rescale: float, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """-> float32 [3, 256]: every uint8 value through the HF processor's arithmetic.

    HF rescales in float64 then casts to float32, then normalizes in float32;
    doing that once per value makes the lookup bit-identical to it.
    """
    x = (np.arange(256, dtype=np.float64) * rescale).astype(np.float32)  # [256]
    mean32 = np.asarray(mean, dtype=np.float32)[:, None]  # [3, 1]
    std32 = np.asarray(std, dtype=np.float32)[:, None]  # [3, 1]
    table = (x[None, :] - mean32) / std32  # [3, 256]
    table.setflags(write=False)
    return table


def preprocess(rgb: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> float32 [1, 3, spec.height, spec.width]: resize, rescale, normalize."""
    resized = resize_pil_bicubic(rgb, spec.height, spec.width)  # [h, w, 3] uint8
    table = _normalize_table(float(spec.rescale), tuple(spec.mean), tuple(spec.std))  # [3, 256]
    pixels = np.empty((1, 3, spec.height, spec.width), dtype=np.float32)  # [1, 3, h, w]
    for c in range(3):
        pixels[0, c] = table[c][resized[:, :, c]]  # [h, w]
    return pixels
