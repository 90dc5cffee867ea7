"""Images in, vision-graph pixels out: load, resize exactly like PIL, normalize.

    load_image(source, channels="bgr", background=(255, 255, 255))
        source: a path to an image file, encoded image bytes, or a NumPy array
        -> RGB uint8 [H, W, 3], C-contiguous, never sharing memory with `source`
    resize_pil_bicubic(rgb, height, width)
        RGB uint8 [H, W, 3] -> RGB uint8 [height, width, 3], bit-exact with
        PIL's `Image.resize((width, height), Image.BICUBIC)`
    preprocess(rgb, spec)
        RGB uint8 [H, W, 3] -> float32 [1, 3, spec.height, spec.width], the same
        numbers as the Hugging Face SigLIP processor (PIL backend)

Files and bytes are decoded by OpenCV; grayscale is replicated to RGB, alpha is
composited onto `background` exactly as PIL's `alpha_composite` (what transformers'
`convert_to_rgb` does to a PIL image) and 16-bit samples become round(v / 257).
Every failure raises `ImageError` with a one-line message naming the input.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache

import cv2
import numpy as np

from runtime.errors import ImageError
from runtime.manifest import PreprocessSpec

CHANNEL_ORDERS = ("bgr", "rgb")
FORMATS_HINT = "give a PNG, JPEG, BMP, TIFF or WebP file"

# ----------------------------------------------------------------------------- loading


def load_image(source, channels: str = "bgr", background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Any supported image source -> RGB uint8 [H, W, 3], C-contiguous.

    `channels` is the order of 3/4-channel *arrays* ("bgr": OpenCV and camera
    frames, "rgb": PIL, matplotlib); files and bytes are always decoded as BGR.
    """
    if channels not in CHANNEL_ORDERS:
        raise ImageError(
            f"load_image: channels must be one of {list(CHANNEL_ORDERS)}, got {channels!r}; "
            f"pass 'bgr' for OpenCV/camera frames or 'rgb' for PIL/matplotlib arrays")
    background = _check_background(background)
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, channels, background)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = np.frombuffer(bytes(source) if isinstance(source, memoryview) else source, np.uint8)  # [n]
        return _decode(data, "image bytes", background)
    if isinstance(source, (str, os.PathLike)):
        where = _printable(os.fsdecode(source))
        return _decode(_read_file(source, where), where, background)
    raise ImageError(
        f"image source: expected a path (str or pathlib.Path), encoded image bytes or a NumPy array, "
        f"got {type(source).__module__}.{type(source).__qualname__}; for a PIL image pass "
        f"np.asarray(img.convert('RGB')) with channels='rgb'")


def _read_file(path, where: str) -> np.ndarray:
    """Path -> the file's bytes as uint8 [n]; np.fromfile so non-ASCII paths work everywhere."""
    if not os.path.exists(path):
        hint = ("URLs are not fetched, download the image first" if where.startswith(("http://", "https://"))
                else "check the path")
        raise ImageError(f"{where}: file not found, expected an image file; {hint}")
    if os.path.isdir(path):
        raise ImageError(f"{where}: is a directory, expected an image file; pass the path of one image")
    try:
        data = np.fromfile(path, dtype=np.uint8)  # [n]
    except PermissionError:
        raise ImageError(
            f"{where}: permission denied reading the image; make the file readable (chmod +r) "
            f"or run as a user who can read it") from None
    except OSError as e:
        raise ImageError(f"{where}: cannot read the file ({e.strerror or e}); check the disk and the path") from None
    if data.size == 0:
        raise ImageError(f"{where}: empty file (0 bytes), expected an image; re-copy or re-save it")
    return data


def _decode(data: np.ndarray, where: str, background: np.ndarray) -> np.ndarray:
    """Encoded bytes uint8 [n] -> RGB uint8 [H, W, 3]."""
    n = data.size
    if n == 0:
        raise ImageError(f"{where}: empty (0 bytes), expected an encoded image; {FORMATS_HINT}")
    view = memoryview(data)
    if view[:3] == b"\xff\xd8\xff" and not _jpeg_is_complete(view):
        raise ImageError(
            f"{where}: truncated JPEG (got {n:,} bytes, the end-of-image marker FFD9 never comes); "
            f"the file was cut off while saving, copying or downloading, re-copy or re-save it")
    if view[:8] == b"\x89PNG\r\n\x1a\n" and not _png_is_complete(view):
        raise ImageError(
            f"{where}: truncated PNG (got {n:,} bytes, no IEND chunk); "
            f"the file was cut off while saving, copying or downloading, re-copy or re-save it")
    try:
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)  # [H, W] | [H, W, C], BGR(A)
    except cv2.error:
        img = None
    if img is None or img.size == 0:
        raise ImageError(
            f"{where}: not an image OpenCV can decode (got {n:,} bytes starting with {bytes(view[:12])!r}); "
            f"{FORMATS_HINT}")
    if img.dtype == np.uint16:
        img = _from_16bit(img)
    elif img.dtype != np.uint8:
        raise ImageError(
            f"{where}: {img.dtype} samples are not supported (expected 8- or 16-bit integers, e.g. not HDR/EXR); "
            f"save it as an 8-bit PNG or JPEG")
    if img.ndim == 3 and img.shape[2] not in (1, 2, 3, 4):
        raise ImageError(
            f"{where}: {img.shape[2]} channels (expected gray, gray+alpha, RGB or RGBA); "
            f"save it as an RGB PNG or JPEG")
    return _to_rgb(img, "bgr", background)


# A JPEG marker: 0xFF then a byte that is not stuffing (00), fill (FF) or a restart (D0-D7).
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xff\xd0-\xd7]")


def _jpeg_is_complete(data: memoryview) -> bool:
    """Walk the segments from SOI; True when the end-of-image marker is reached.

    Walking (rather than checking the last two bytes) skips thumbnails inside
    EXIF and accepts data appended after the image (motion photos, trailers).
    """
    pos = 2
    while True:
        m = _JPEG_MARKER.search(data, pos)
        if m is None:
            return False
        marker = data[m.start() + 1]
        if marker == 0xD9:
            return True
        if marker == 0x01:  # TEM: no length field
            pos = m.end()
            continue
        if m.end() + 2 > len(data):
            return False
        length = int.from_bytes(data[m.end():m.end() + 2], "big")
        if length < 2:
            return False
        pos = m.end() + length  # after SOS this lands in entropy-coded data; the search skips it


def _png_is_complete(data: memoryview) -> bool:
    """Walk the chunks after the signature; True when an IEND chunk header is present."""
    pos = 8
    while pos + 8 <= len(data):
        if data[pos + 4:pos + 8] == b"IEND":
            return True
        pos += 12 + int.from_bytes(data[pos:pos + 4], "big")  # length + type + data + crc
    return False


def _array_to_rgb(arr: np.ndarray, channels: str, background: np.ndarray) -> np.ndarray:
    """Camera/app array [H, W] | [H, W, 1|3|4] -> RGB uint8 [H, W, 3]."""
    where = "image array"
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        hint = (" (a 1-D uint8 array looks like an encoded file: pass arr.tobytes())"
                if arr.ndim == 1 and arr.dtype == np.uint8 else "")
        raise ImageError(
            f"{where}: expected shape [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got {tuple(arr.shape)}{hint}; "
            f"pass one grayscale, BGR/RGB or BGRA/RGBA image, channels last")
    if arr.size == 0:
        raise ImageError(
            f"{where}: empty, got shape {tuple(arr.shape)}; pass an image at least 1x1 pixels")
    if arr.dtype == np.uint8:
        img = arr
    elif arr.dtype == np.uint16:
        img = _from_16bit(arr)
    elif arr.dtype in (np.float16, np.float32, np.float64):
        lo, hi = float(np.min(arr)), float(np.max(arr))  # NaN propagates and fails the check
        if not (lo >= 0.0 and hi <= 1.0):
            raise ImageError(
                f"{where}: {arr.dtype} values must lie in [0, 1], got [{lo:g}, {hi:g}]; "
                f"scale to [0, 1] or pass uint8 pixels")
        img = np.clip(np.rint(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    else:
        raise ImageError(
            f"{where}: unsupported dtype {arr.dtype} (expected uint8, uint16, or float in [0, 1]); "
            f"convert with arr.astype(np.uint8)")
    return _to_rgb(img, channels, background)


def _check_background(background) -> np.ndarray:
    try:
        ok = len(background) == 3 and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v <= 255 for v in background)
    except TypeError:
        ok = False
    if not ok:
        raise ImageError(
            f"load_image: background must be 3 integers in 0..255 (R, G, B), got {background!r}; "
            f"pass e.g. (255, 255, 255)")
    return np.array(background, dtype=np.uint32)  # [3] RGB


def _printable(s: str) -> str:
    """Keep messages on one line even for paths with control characters."""
    return s if s.isprintable() else ascii(s)


# ----------------------------------------------------------------------------- conversions


def _from_16bit(img: np.ndarray) -> np.ndarray:
    """uint16 -> uint8 as round(v / 257); v = 257k + 128.5 never happens, so no ties."""
    return ((img.astype(np.uint32) * 2 + 257) // 514).astype(np.uint8)


def _to_rgb(img: np.ndarray, order: str, background: np.ndarray) -> np.ndarray:
    """uint8 [H, W] | [H, W, 1|2|3|4] in `order` -> new RGB uint8 [H, W, 3], C-contiguous."""
    if img.ndim == 2:
        img = img[:, :, None]  # [H, W, 1]
    c = img.shape[2]
    if c == 1:
        return np.repeat(img, 3, axis=2)  # [H, W, 3]
    if c == 2:
        gray, alpha = img[:, :, :1], img[:, :, 1]
        return _composite(np.repeat(gray, 3, axis=2), alpha, background)  # [H, W, 3]
    if c == 3 and order == "bgr":
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)  # [H, W, 3], a new array; ~5x NumPy's strided copy
    color = img[:, :, 2::-1] if order == "bgr" else img[:, :, :3]  # [H, W, 3] RGB view
    if c == 4:
        return _composite(color, img[:, :, 3], background)
    return np.array(color, dtype=np.uint8, order="C")  # always a copy


def _composite(rgb: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> np.ndarray:
    """RGB uint8 [H, W, 3] with alpha uint8 [H, W] over an opaque colour -> RGB uint8 [H, W, 3].

    round((a*fg + (255-a)*bg) / 255).  PIL's `alpha_composite` (7-bit fixed point,
    SHIFTFORDIV255) gives the very same value for all 256**3 (fg, a, bg) when the
    destination is opaque, so this matches transformers' `convert_to_rgb` on PIL images.
    """
    a = alpha.astype(np.uint32)[:, :, None]  # [H, W, 1]
    total = rgb.astype(np.uint32) * a + background * (255 - a)  # [H, W, 3], at most 255 * 255
    return ((2 * total + 255) // 510).astype(np.uint8)  # the numerator is never a tie: 255 is odd


# ----------------------------------------------------------------------------- resize

PRECISION_BITS = 32 - 8 - 2  # PIL's fixed point for 8-bit images: 22 fraction bits


def _bicubic(x: np.ndarray) -> np.ndarray:
    """PIL's bicubic_filter (a = -0.5), with its operation order so doubles match bit for bit."""
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@lru_cache(maxsize=64)
def _taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
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
