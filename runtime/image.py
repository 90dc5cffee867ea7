"""Images in: any source to upright RGB uint8, within the size limit (resize and normalise: runtime.preprocess).

    load_image(source, channels="bgr", background=(255, 255, 255), *, max_pixels=DEFAULT_MAX_PIXELS,
               exif_orientation=True)
        source: a path to an image file, encoded image bytes, or a NumPy array
        -> RGB uint8 [H, W, 3], C-contiguous, never sharing memory with `source`, upright
    exif_transpose(img, orientation)
        [H, W, C] as stored, EXIF orientation 1..8 -> [H', W', C] as displayed

Files and bytes are decoded by OpenCV; grayscale is replicated to RGB, alpha is
composited onto `background` exactly as PIL's `alpha_composite` (what transformers'
`convert_to_rgb` does to a PIL image) and 16-bit samples become round(v / 257).
Every failure raises `ImageError` with a one-line message naming the input.

Size limit: an image of more than `max_pixels` (width x height) is refused before it is decoded,
from the size in its header (runtime.image_header; a file is read only as far as its header), so a
30000x30000 PNG of 100 KB costs kilobytes, not the 2.7 GB of its pixels.  Formats whose header is
not read there are decoded and then checked; arrays are checked as they come.  A side over MAX_SIDE
is refused too (the resize's work grows with the longer side), and bytes are read with a bound.
EXIF orientation: files and bytes come out as every viewer shows them (JPEG APP1, PNG eXIf, WebP
EXIF, TIFF's own tag); `exif_orientation=False` keeps the pixels as stored.
"""

from __future__ import annotations

import os
import re
import stat
import struct
from functools import lru_cache

import cv2
import numpy as np

from runtime.errors import ImageError
from runtime.image_header import DEFAULT_MAX_PIXELS, MAX_PIXELS_CEILING, Header, HeaderError, read_header

CHANNEL_ORDERS = ("bgr", "rgb")
FORMATS_HINT = "give a PNG, JPEG, BMP, TIFF or WebP file"
LIMIT_FIX = "raise the limit with --max-image-pixels N or FlashVL.load(..., max_image_pixels=N), or downscale it"

# ----------------------------------------------------------------------------- loading


def load_image(source, channels: str = "bgr", background: tuple[int, int, int] = (255, 255, 255), *,
               max_pixels: int = DEFAULT_MAX_PIXELS, exif_orientation: bool = True) -> np.ndarray:
    """Any supported image source -> RGB uint8 [H, W, 3], C-contiguous.

    `channels` is the order of 3/4-channel *arrays* ("bgr": OpenCV and camera
    frames, "rgb": PIL, matplotlib); files and bytes are always decoded as BGR.
    `max_pixels` refuses larger images (width x height) before decoding them;
    `exif_orientation=False` ignores the EXIF orientation of files and bytes.
    """
    if channels not in CHANNEL_ORDERS:
        raise ImageError(
            f"load_image: channels must be one of {list(CHANNEL_ORDERS)}, got {channels!r}; "
            f"pass 'bgr' for OpenCV/camera frames or 'rgb' for PIL/matplotlib arrays")
    background = _check_background(background)
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or \
            not 1 <= max_pixels <= MAX_PIXELS_CEILING:
        raise ImageError(f"load_image: max_pixels must be an integer in 1..{MAX_PIXELS_CEILING} (width x height; "
                         f"the ceiling is OpenCV's own decode limit), got {max_pixels!r}")
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, channels, background, max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = np.frombuffer(bytes(source) if isinstance(source, memoryview) else source, np.uint8)  # [n]
        header = _checked_header(data, "image bytes", max_pixels)
        return _decode(data, header, "image bytes", background, max_pixels, exif_orientation)
    if isinstance(source, (str, os.PathLike)):
        where = _printable(os.fsdecode(source))
        data, header = _read_file(source, where, max_pixels)
        return _decode(data, header, where, background, max_pixels, exif_orientation)
    raise ImageError(
        f"image source: expected a path (str or pathlib.Path), encoded image bytes or a NumPy array, "
        f"got {type(source).__module__}.{type(source).__qualname__}; for a PIL image pass "
        f"np.asarray(img.convert('RGB')) with channels='rgb'")


def _read_file(path, where: str, max_pixels: int) -> tuple[np.ndarray, Header | None]:
    """Path -> (the file's bytes as uint8 [n], its header); a file too large to decode is refused
    after reading its header only."""
    if not os.path.exists(path):
        hint = ("URLs are not fetched, download the image first" if where.startswith(("http://", "https://"))
                else "check the path")
        raise ImageError(f"{where}: file not found, expected an image file; {hint}")
    if os.path.isdir(path):
        raise ImageError(f"{where}: is a directory, expected an image file; pass the path of one image")
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if stat.S_ISREG(st.st_mode):  # the header first, then the rest if it passes
                header = _checked_header(f, where, max_pixels)
                _check_encoded_size(st.st_size, where, max_pixels)
                f.seek(0)
                data = np.fromfile(f, dtype=np.uint8)  # [n]
            else:  # a pipe or a device (/dev/stdin, /dev/zero): no seeking, no size: read with a bound
                data = np.frombuffer(read_stream(f, where, max_pixels), np.uint8)  # [n]
                header = _checked_header(data, where, max_pixels)
    except PermissionError:
        raise ImageError(
            f"{where}: permission denied reading the image; make the file readable (chmod +r) "
            f"or run as a user who can read it") from None
    except OSError as e:
        raise ImageError(f"{where}: cannot read the file ({e.strerror or e}); check the disk and the path") from None
    if data.size == 0:
        raise ImageError(f"{where}: empty file (0 bytes), expected an image; re-copy or re-save it")
    return data, header


def max_encoded_bytes(max_pixels: int) -> int:
    """The most bytes an encoded image within `max_pixels` can take: 8 per pixel (uncompressed 16-bit RGBA,
    the widest sample layout decoded here) and 16 MiB of metadata (EXIF, ICC profiles, thumbnails)."""
    return 8 * max_pixels + (16 << 20)


def _check_encoded_size(size: int, where: str, max_pixels: int) -> None:
    if size > max_encoded_bytes(max_pixels):
        raise ImageError(f"{where}: {size:,} bytes, more than an image within the limit of "
                         f"{_megapixels(max_pixels)} can take ({max_encoded_bytes(max_pixels):,}); {LIMIT_FIX}")


# What OpenCV decodes but runtime.image_header does not size: EXR, AVIF/HEIF (an ISO-BMFF ftyp box), JPEG XL.
_UNSIZED_MAGIC = re.compile(rb"\x76\x2f\x31\x01|....ftyp|\xff\x0a|\x00\x00\x00\x0cJXL ", re.DOTALL)


def read_stream(f, where: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """A pipe's or device's bytes (stdin, /dev/zero), never more than an image within `max_pixels` can take;
    a stream that does not begin like an image is refused after its first 64 KiB."""
    head = f.read(1 << 16)
    try:
        known = read_header(head) is not None
    except HeaderError:
        known = True  # a signature we know; _checked_header says what is wrong with the rest
    if len(head) >= 16 and not known and not _UNSIZED_MAGIC.match(head):
        raise ImageError(f"{where}: not an image (it begins with {head[:12]!r}); {FORMATS_HINT}")
    limit = max_encoded_bytes(max_pixels)
    chunks, n = [head], len(head)
    while chunk := f.read(1 << 22):
        chunks.append(chunk)
        n += len(chunk)
        if n > limit:
            raise ImageError(f"{where}: more than {limit:,} bytes, more than an image within the limit of "
                             f"{_megapixels(max_pixels)} can take; {LIMIT_FIX}")
    return b"".join(chunks)


def _checked_header(src, where: str, max_pixels: int) -> Header | None:
    """Encoded bytes or a binary file -> its Header (None: a format whose header is not read), or
    ImageError for a size of 0 or over `max_pixels`."""
    try:
        header = read_header(src)
    except HeaderError as e:
        raise ImageError(f"{where}: malformed header ({e}); re-save the image with an image editor") from None
    if header is not None and header.width is not None and header.height is not None:
        if header.width <= 0 or header.height <= 0:
            raise ImageError(
                f"{where}: the {header.format.upper()} header says {header.width}x{header.height} pixels, an "
                f"image without pixels; the file is damaged, re-save or re-export it")
        _check_size(header.width, header.height, where, max_pixels)
    return header


MAX_SIDE = 65535  # JPEG's own limit; the resize's tap tables grow with the longer side (~200 B a pixel of it)


def _check_size(width: int, height: int, where: str, max_pixels: int) -> None:
    if max(width, height) > MAX_SIDE:
        raise ImageError(f"{where}: {width}x{height} has a side over {MAX_SIDE:,} pixels (resizing it would take "
                         f"memory in proportion to that side); crop or downscale it")
    if width * height > max_pixels:
        raise ImageError(f"{where}: {width}x{height} = {_megapixels(width * height)}, over the limit of "
                         f"{_megapixels(max_pixels)}; {LIMIT_FIX}")


def _megapixels(n: int) -> str:
    return f"{n / 1e6:.1f} MP" if n >= 100_000 else f"{n:,} pixels"


def _decode(data: np.ndarray, header: Header | None, where: str, background: np.ndarray, max_pixels: int,
            exif_orientation: bool) -> np.ndarray:
    """Encoded bytes uint8 [n] -> RGB uint8 [H, W, 3], upright unless exif_orientation is False."""
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
    if header is not None and (header.width is None or header.height is None):
        # A format we read whose size we could not find: decoding it would be trusting the decoder not to
        # allocate what the limit is there to refuse (libtiff takes sizes this reader did not).
        raise ImageError(f"{where}: a {header.format.upper()} whose header gives no size (damaged, or a layout not "
                         f"read here), so its size cannot be checked before decoding; re-save it as PNG or JPEG")
    try:
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)  # [H, W] | [H, W, C], BGR(A)
    except cv2.error:
        img = None
    if img is None or img.size == 0:
        path_like = where == "image bytes" and n < 4096 and bytes(view[:1]) in (b"/", b".", b"~")
        raise ImageError(
            f"{where}: not an image OpenCV can decode (got {n:,} bytes starting with {bytes(view[:12])!r}); "
            f"{FORMATS_HINT}" + ("; bytes are read as an encoded image, pass a path as a str or pathlib.Path"
                                 if path_like else ""))
    _check_size(img.shape[1], img.shape[0], where, max_pixels)  # formats whose header was not read
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
    rgb = _to_rgb(img, "bgr", background)  # [H, W, 3]
    if header is None or header.orientation == 1:
        return rgb
    # OpenCV applies a TIFF's orientation itself (through libtiff); other formats' EXIF it leaves to us
    done = header.orientation if header.format == "tiff" and _opencv_orients_tiff() else 1
    want = header.orientation if exif_orientation else 1
    if done == want:
        return rgb
    return exif_transpose(rgb, want if done == 1 else _INVERSE.get(done, done))  # [H', W', 3]


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


def _array_to_rgb(arr: np.ndarray, channels: str, background: np.ndarray, max_pixels: int) -> np.ndarray:
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
    _check_size(arr.shape[1], arr.shape[0], where, max_pixels)  # the same limit as files: resizing scales with it
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


# ----------------------------------------------------------------------------- orientation

# EXIF orientation -> (transpose first?, then cv2.flip code: 1 mirrors columns, 0 rows, -1 both; None: no flip)
_ORIENTATIONS = {1: (False, None), 2: (False, 1), 3: (False, -1), 4: (False, 0),
                 5: (True, None), 6: (True, 1), 7: (True, -1), 8: (True, 0)}
_INVERSE = {6: 8, 8: 6}  # the others undo themselves


def exif_transpose(img: np.ndarray, orientation: int) -> np.ndarray:
    """[H, W, C] as stored -> as displayed (a new array; 5-8 give [W, H, C]).

    2 mirrors, 3 turns 180 degrees, 4 flips upside down, 5 transposes, 6 turns 90 degrees clockwise,
    7 transposes along the other diagonal, 8 turns 90 degrees counter-clockwise: PIL's exif_transpose.
    OpenCV's transpose and flip rather than NumPy views: ~7x faster than copying a strided view.
    """
    transpose, flip = _ORIENTATIONS[orientation]
    out = cv2.transpose(img) if transpose else img  # [W, H, C]
    return cv2.flip(out, flip) if flip is not None else np.array(out, order="C")


@lru_cache(maxsize=1)
def _opencv_orients_tiff() -> bool:
    """Whether this OpenCV's TIFF decoder applies the Orientation tag itself (5.1 does, even with
    IMREAD_UNCHANGED): decodes a 2x1 gray TIFF tagged 2 (mirrored) and looks."""
    tags = ((256, 2), (257, 1), (258, 8), (259, 1), (262, 1), (273, 134), (274, 2), (277, 1), (278, 1), (279, 2))
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHIHH", tag, 3, 1, v, 0) for tag, v in tags)
    tiff = b"II*\0" + struct.pack("<I", 8) + ifd + b"\0\0\0\0" + b"\x00\xff"  # pixels at offset 134
    img = cv2.imdecode(np.frombuffer(tiff, np.uint8), cv2.IMREAD_UNCHANGED)
    return img is not None and img.reshape(-1).tolist() == [255, 0]


# ----------------------------------------------------------------------------- conversions


_STRIP = 256  # rows per step of the uint32 arithmetic below: its temporaries stay megabytes at any image size


def _from_16bit(img: np.ndarray) -> np.ndarray:
    """uint16 -> uint8 as round(v / 257); v = 257k + 128.5 never happens, so no ties."""
    out = np.empty(img.shape, np.uint8)
    for r in range(0, img.shape[0], _STRIP):
        out[r:r + _STRIP] = (img[r:r + _STRIP].astype(np.uint32) * 2 + 257) // 514
    return out


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
    out = np.empty(rgb.shape, np.uint8)  # [H, W, 3]
    for r in range(0, rgb.shape[0], _STRIP):
        a = alpha[r:r + _STRIP].astype(np.uint32)[:, :, None]  # [strip, W, 1]
        total = rgb[r:r + _STRIP].astype(np.uint32) * a + background * (255 - a)  # [strip, W, 3], <= 255 * 255
        out[r:r + _STRIP] = (2 * total + 255) // 510  # the numerator is never a tie: 255 is odd
    return out
