"""An encoded image's size and EXIF orientation, read from its header without decoding it.

    read_header(src) -> Header | None
        src: encoded bytes (bytes, bytearray, memoryview, uint8 array), or a binary file with seek/read
        -> Header(format, width, height, orientation), or None for a format this module cannot size
    exif_orientation(tiff) -> 1..8
        tiff: an EXIF payload (a TIFF structure) -> its IFD0 Orientation tag (0x0112); 1 when absent

Sized: PNG, JPEG, GIF, BMP, WebP (VP8, VP8L, VP8X), TIFF and BigTIFF, PNM (P1-P6), PAM (P7), PFM,
Sun raster, Radiance HDR, JPEG 2000 (JP2 and raw codestreams) and AVIF/HEIF.  Anything else OpenCV reads
(EXR, ...) gives None: the caller decodes it and checks the decoded size.  `width`/`height` are None when
the format is known but its header is damaged (the decoder then says so), 0 when the header says 0.
`orientation` comes from JPEG APP1 "Exif", PNG eXIf (before IDAT, as the PNG spec orders it), WebP
EXIF and a TIFF's own IFD0; it is 1 when there is none or its value is not 1..8.

Robust to garbage: reads are small and never past the end (a file is read in pieces, never whole,
so refusing a 2 GB file costs kilobytes), every loop advances and stops after MAX_STEPS steps.
A header that needs more steps than that to reach its size raises HeaderError: no camera writes
one, and handing it to the decoder would let it allocate what the header check is there to refuse.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass

# The default limit on width x height (runtime.image, FlashVL.load, --max-image-pixels).  64 MP is above
# every phone photo (12-50 MP), an iPhone panorama (63 MP) and an 8K frame (33 MP); the image and its
# RGB, RGBA and resize copies then stay under ~1 GB at the peak, which an 8 GB device can spare.
DEFAULT_MAX_PIXELS = 64_000_000
# The most it may be raised to: OpenCV's own decode limit (OPENCV_IO_MAX_IMAGE_PIXELS, 2**30 by default), above
# which OpenCV refuses an image with nothing to say why.
MAX_PIXELS_CEILING = 1 << 30
MAX_STEPS = 4096  # segments, chunks, boxes, IFD entries or 64 KiB scans per header; real files use < 100
_SCAN = 65536  # bytes read per step when scanning for a JPEG marker or growing a text header
_TEXT_HEADER_MAX = 1 << 24  # PNM/PAM/HDR: a text header (comments included) longer than 16 MiB is refused


class HeaderError(ValueError):
    """The header is too long or too fragmented to size within the bounds above."""


@dataclass(frozen=True)
class Header:
    format: str  # "png", "jpeg", "gif", "bmp", "webp", "tiff", "pnm", "sunras", "hdr", "jpeg2000"
    width: int | None
    height: int | None
    orientation: int = 1  # EXIF: 1 upright; 2-8 the flips and rotations that display it upright


class _Source:
    """read(offset, n): at most n bytes at `offset` (fewer at the end), from bytes or a seekable file."""

    def __init__(self, buf: memoryview | None, file, start: int, size: int):
        self._buf, self._file, self._start, self.size = buf, file, start, size

    @classmethod
    def of(cls, src) -> _Source:
        if isinstance(src, _Source):
            return src
        if hasattr(src, "seek"):
            return cls(None, src, 0, src.seek(0, os.SEEK_END))
        buf = memoryview(src).cast("B")  # bytes, bytearray, a uint8 array: anything with the buffer protocol
        return cls(buf, None, 0, len(buf))

    def read(self, offset: int, n: int) -> bytes:
        n = min(n, self.size - offset)
        if offset < 0 or n <= 0:
            return b""
        at = self._start + offset
        if self._buf is not None:
            return bytes(self._buf[at:at + n])
        self._file.seek(at)
        return self._file.read(n)

    def window(self, offset: int, size: int) -> _Source:
        """The `size` bytes at `offset` (clipped to this source) as a source of their own."""
        offset = max(0, min(offset, self.size))
        return _Source(self._buf, self._file, self._start + offset, max(0, min(size, self.size - offset)))


def read_header(src) -> Header | None:
    """Encoded bytes or a binary file -> Header, or None for a format this module cannot size."""
    s = _Source.of(src)
    head = s.read(0, 32)
    for magic, reader in _READERS:
        if head.startswith(magic):
            return reader(s, head)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _webp(s)
    if head[4:8] == b"ftyp":
        return _heif(s, head)
    if len(head) >= 2 and head[0:1] == b"P" and head[1:2] in b"1234567fF":
        return _pnm(s, head)
    return None


def exif_orientation(tiff) -> int:
    """An EXIF payload (TIFF header + IFD0, bytes or a _Source) -> Orientation 1..8 (1 when absent)."""
    s = _Source.of(tiff)
    if s.read(0, 6) == b"Exif\0\0":  # WebP's EXIF chunk sometimes keeps JPEG's prefix
        s = s.window(6, s.size - 6)
    value = _tiff_tags(s, (0x0112,)).get(0x0112, 1)
    return value if 1 <= value <= 8 else 1


# ----------------------------------------------------------------------------- TIFF structures


def _tiff_tags(s: _Source, wanted: tuple[int, ...]) -> dict[int, int]:
    """IFD0's single integer values for the `wanted` tags (classic TIFF and BigTIFF, either byte order)."""
    head = s.read(0, 16)
    bo = {b"II": "<", b"MM": ">"}.get(head[:2])
    if bo is None or len(head) < 8:
        return {}
    version = struct.unpack(bo + "H", head[2:4])[0]
    if version == 42:
        ifd, count_fmt, entry, field = struct.unpack(bo + "I", head[4:8])[0], "H", 12, 4
    elif version == 43 and len(head) == 16:
        ifd, count_fmt, entry, field = struct.unpack(bo + "Q", head[8:16])[0], "Q", 20, 8
    else:
        return {}
    count_size = struct.calcsize(bo + count_fmt)
    raw = s.read(ifd, count_size)
    if len(raw) < count_size:
        return {}
    count = min(struct.unpack(bo + count_fmt, raw)[0], MAX_STEPS)  # more entries than that: only the first
    table = s.read(ifd + count_size, count * entry)
    # BYTE, SHORT, LONG, SBYTE, SSHORT, SLONG, LONG8, SLONG8 (BigTIFF): libtiff takes any integer type for a
    # size, so a reader that skipped one would let a 30000x30000 TIFF through unsized
    sizes = {1: ("B", 1), 3: ("H", 2), 4: ("I", 4), 6: ("b", 1), 8: ("h", 2), 9: ("i", 4), 16: ("Q", 8),
             17: ("q", 8)}
    out = {}
    for i in range(len(table) // entry):
        e = table[i * entry:(i + 1) * entry]
        tag, typ = struct.unpack(bo + "HH", e[:4])
        n = struct.unpack(bo + ("I" if field == 4 else "Q"), e[4:4 + field])[0]
        if tag in wanted and tag not in out and typ in sizes and n >= 1 and sizes[typ][1] <= field:
            fmt, size = sizes[typ]
            out[tag] = struct.unpack(bo + fmt, e[4 + field:4 + field + size])[0]  # first value, stored inline
    return out


def _tiff(s: _Source, head: bytes) -> Header:
    tags = _tiff_tags(s, (0x0100, 0x0101, 0x0112))
    o = tags.get(0x0112, 1)
    return Header("tiff", tags.get(0x0100), tags.get(0x0101), o if 1 <= o <= 8 else 1)


# ----------------------------------------------------------------------------- chunked formats


def _png(s: _Source, head: bytes) -> Header:
    width = height = None
    if head[12:16] == b"IHDR" and len(head) >= 24:
        width, height = struct.unpack(">II", head[16:24])
    orientation, pos = 1, 8
    for _ in range(MAX_STEPS):  # chunks up to IDAT, for eXIf; the size is in IHDR
        top = s.read(pos, 8)
        if len(top) < 8 or top[4:8] in (b"IDAT", b"IEND"):
            break
        length = struct.unpack(">I", top[:4])[0]
        if top[4:8] == b"eXIf":
            orientation = exif_orientation(s.window(pos + 8, length))
            break
        pos += 12 + length  # length, type, data, CRC
    return Header("png", width, height, orientation)


_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))


def _jpeg(s: _Source, head: bytes) -> Header:
    """Walk the markers as libjpeg's jpeg_read_header does: garbage before a marker is skipped, so are
    FF fill bytes; the first SOFn gives the size; SOS (the scan data begins) or EOI ends the header."""
    width = height = exif = None
    pos = 2
    for _ in range(MAX_STEPS):
        pos = _next_ff(s, pos)  # at an FF: the marker code is the first byte after the FFs
        run = s.read(pos, 64)
        code = run.lstrip(b"\xff")
        if not code:
            if len(run) < 64:
                break  # the data ends in FFs
            pos += len(run)
            continue
        pos += len(run) - len(code) + 1  # just past the marker code
        marker = code[0]
        if marker == 0x00:  # a stuffed FF00 is no marker: garbage, keep scanning
            continue
        if marker in (0xD8, 0xD9, 0xDA):  # a second SOI, EOI or SOS: the header ends
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # RSTn, TEM: no length field
            continue
        seg = s.read(pos, 10)
        if len(seg) < 2 or struct.unpack(">H", seg[:2])[0] < 2:
            break
        length = struct.unpack(">H", seg[:2])[0]
        if marker in _SOF and width is None and len(seg) >= 7:
            height, width = struct.unpack(">HH", seg[3:7])  # length, precision, height, width
        elif marker == 0xE1 and exif is None and seg[2:8] == b"Exif\0\0":  # the first Exif APP1 counts
            exif = exif_orientation(s.window(pos + 8, length - 8))
        pos += length
    else:
        if width is None:
            raise HeaderError(f"more than {MAX_STEPS} JPEG segments before the frame header")
    return Header("jpeg", width, height, exif or 1)


def _next_ff(s: _Source, pos: int) -> int:
    """The offset of the next 0xFF byte at or after `pos` (s.size if none); HeaderError past MAX_STEPS scans."""
    n = 64  # a marker usually follows its segment at once; scan further in bigger pieces
    for _ in range(MAX_STEPS):
        chunk = s.read(pos, n)
        i = chunk.find(b"\xff")
        if i >= 0 or len(chunk) < n:
            return pos + i if i >= 0 else s.size
        pos, n = pos + len(chunk), _SCAN
    raise HeaderError(f"more than {MAX_STEPS * _SCAN >> 20} MiB of garbage between JPEG markers")


def _webp(s: _Source) -> Header:
    width = height = None
    orientation, pos = 1, 12
    for step in range(MAX_STEPS):  # RIFF chunks: the first says the size; EXIF follows the image in VP8X files
        top = s.read(pos, 30)
        if len(top) < 8:
            break
        fourcc, length = top[:4], struct.unpack("<I", top[4:8])[0]
        data = top[8:]
        if step == 0 and fourcc == b"VP8 " and len(data) >= 10 and data[3:6] == b"\x9d\x01\x2a":
            w, h = struct.unpack("<HH", data[6:10])
            width, height = w & 0x3FFF, h & 0x3FFF  # the top 2 bits are an upscaling hint
        elif step == 0 and fourcc == b"VP8L" and len(data) >= 5 and data[0] == 0x2F:
            bits = int.from_bytes(data[1:5], "little")
            width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        elif step == 0 and fourcc == b"VP8X" and len(data) >= 10:
            width, height = int.from_bytes(data[4:7], "little") + 1, int.from_bytes(data[7:10], "little") + 1
            if not data[0] & 0x08:  # no EXIF flag: no need to walk the (possibly many) frames
                break
        elif fourcc == b"EXIF":
            orientation = exif_orientation(s.window(pos + 8, length))
            break
        if step == 0 and fourcc != b"VP8X":
            break
        pos += 8 + length + (length & 1)  # chunks are padded to an even size
    return Header("webp", width, height, orientation)


def _jp2(s: _Source, head: bytes) -> Header:
    pos, end = 0, s.size
    for _ in range(MAX_STEPS):  # boxes: length, type; "jp2h" holds "ihdr" (height, width)
        top = s.read(pos, 16)
        if len(top) < 8:
            break
        length, kind = struct.unpack(">I", top[:4])[0], top[4:8]
        header = 8
        if length == 1 and len(top) == 16:
            length, header = struct.unpack(">Q", top[8:16])[0], 16
        elif length == 0:
            length = end - pos
        if kind == b"jp2h":
            end, pos = min(end, pos + length), pos + header  # step into the superbox
            continue
        if kind == b"ihdr":
            height, width = struct.unpack(">II", s.read(pos + header, 8).ljust(8, b"\0"))
            return Header("jpeg2000", width, height)
        if length < header:
            break
        pos += length
    return Header("jpeg2000", None, None)


_HEIF_BRANDS = (b"avif", b"avis", b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1")


def _boxes(s: _Source, pos: int, end: int):
    """ISO-BMFF boxes in [pos, end) -> (type, content start, box end); at most MAX_STEPS of them."""
    for _ in range(MAX_STEPS):
        top = s.read(pos, 16)
        if pos >= end or len(top) < 8:
            return
        length, kind, header = struct.unpack(">I", top[:4])[0], top[4:8], 8
        if length == 1 and len(top) == 16:
            length, header = struct.unpack(">Q", top[8:16])[0], 16
        elif length == 0:
            length = end - pos
        if length < header:
            return
        yield kind, pos + header, min(pos + length, end)
        pos += length
    raise HeaderError(f"more than {MAX_STEPS} boxes")


def _heif(s: _Source, head: bytes) -> Header | None:
    """AVIF / HEIF: the largest 'ispe' (image spatial extents) of meta/iprp/ipco; the primary image's is the
    largest (the others are its grid tiles, thumbnails, alpha planes), so the limit is checked against it."""
    if head[8:12] not in _HEIF_BRANDS:
        return None  # an ISO-BMFF file that is no still image (an mp4): OpenCV decides
    fmt, sizes = "avif" if head[8:11] == b"avi" else "heif", []
    for kind, start, end in _boxes(s, 0, s.size):
        if kind != b"meta":
            continue
        for kind2, start2, end2 in _boxes(s, start + 4, end):  # meta is a full box: version and flags first
            if kind2 != b"iprp":
                continue
            for kind3, start3, end3 in _boxes(s, start2, end2):
                if kind3 == b"ipco":
                    for kind4, start4, _ in _boxes(s, start3, end3):
                        if kind4 == b"ispe":  # full box, then width and height
                            sizes.append(struct.unpack(">II", s.read(start4 + 4, 8).ljust(8, b"\0")))
    if not sizes:
        return Header(fmt, None, None)
    width, height = max(sizes, key=lambda wh: wh[0] * wh[1])
    return Header(fmt, width, height)


def _j2k(s: _Source, head: bytes) -> Header:
    if len(head) < 24:  # SOC, then SIZ: length, capabilities, Xsiz, Ysiz, XOsiz, YOsiz
        return Header("jpeg2000", None, None)
    xsiz, ysiz, xo, yo = struct.unpack(">IIII", head[8:24])
    return Header("jpeg2000", max(xsiz - xo, 0), max(ysiz - yo, 0))


# ----------------------------------------------------------------------------- fixed headers


def _gif(s: _Source, head: bytes) -> Header:
    if len(head) < 10:
        return Header("gif", None, None)
    width, height = struct.unpack("<HH", head[6:10])  # the logical screen, the canvas a decoder allocates
    return Header("gif", width, height)


def _bmp(s: _Source, head: bytes) -> Header:
    if len(head) < 26:
        return Header("bmp", None, None)
    dib = struct.unpack("<I", head[14:18])[0]  # the info header's size says its layout
    if not (dib == 12 or 16 <= dib <= 1024):  # no BMP (text that starts with "BM"?): OpenCV decides
        return Header("bmp", None, None)
    if dib == 12:  # BITMAPCOREHEADER: unsigned 16-bit sizes
        width, height = struct.unpack("<HH", head[18:22])
    else:
        width, height = struct.unpack("<ii", head[18:26])
        height = abs(height)  # negative: rows stored top-down
        width = width if width >= 0 else None  # negative widths do not exist
    return Header("bmp", width, height)


def _sunras(s: _Source, head: bytes) -> Header:
    if len(head) < 12:
        return Header("sunras", None, None)
    width, height = struct.unpack(">II", head[4:12])
    return Header("sunras", width, height)


# ----------------------------------------------------------------------------- text headers

_PNM_COMMENT = re.compile(rb"#[^\r\n]*")


def _text_header(s: _Source, parse):
    """Grow the prefix read (4 KiB, x16 each time) until `parse(prefix, whole)` is not None."""
    n = 4096
    while True:
        buf = s.read(0, n)
        whole = len(buf) < n
        got = parse(buf, whole)
        if got is not None or whole:
            return got
        if n >= _TEXT_HEADER_MAX:
            raise HeaderError(f"a text header longer than {_TEXT_HEADER_MAX >> 20} MiB")
        n *= 16


def _pnm(s: _Source, head: bytes) -> Header:
    kind = head[1:2]
    if kind == b"7":  # PAM: "WIDTH w" and "HEIGHT h" lines before ENDHDR
        def parse(buf, whole):
            end = buf.find(b"ENDHDR")
            if end < 0:
                return None if not whole else (None, None)
            text = _PNM_COMMENT.sub(b"", buf[:end])
            w, h = re.search(rb"(?m)^\s*WIDTH\s+(\d+)", text), re.search(rb"(?m)^\s*HEIGHT\s+(\d+)", text)
            return (int(w[1]) if w else None), (int(h[1]) if h else None)
    else:  # P1-P6, PF, Pf: magic, width, height (then maxval or scale), comments anywhere
        def parse(buf, whole):
            tokens = re.findall(rb"\S+", _PNM_COMMENT.sub(b" ", buf[2:]))
            if len(tokens) < 3 and not whole:  # the height must be followed by something to be complete
                return None
            nums = [int(t) if t.isdigit() else None for t in tokens[:2]]
            return tuple(nums + [None] * (2 - len(nums)))
    width, height = _text_header(s, parse)
    return Header("pnm", width, height)


_HDR_SIZE = re.compile(rb"\n\s*([-+])([XY])\s+(\d+)\s+([-+])([XY])\s+(\d+)\s*\n")


def _hdr(s: _Source, head: bytes) -> Header:
    def parse(buf, whole):
        blank = buf.find(b"\n\n")  # the header's lines end with an empty line; then the resolution line
        m = _HDR_SIZE.match(buf, blank + 1) if blank >= 0 else None
        if m is None:
            return None if not whole else (None, None)
        first, second = int(m[3]), int(m[6])
        return (second, first) if m[2] == b"Y" else (first, second)  # "-Y H +X W" is the usual, rows first
    width, height = _text_header(s, parse)
    return Header("hdr", width, height)


_READERS = (
    (b"\x89PNG\r\n\x1a\n", _png),
    (b"\xff\xd8\xff", _jpeg),
    (b"GIF87a", _gif),
    (b"GIF89a", _gif),
    (b"BM", _bmp),
    (b"II*\x00", _tiff),
    (b"MM\x00*", _tiff),
    (b"II+\x00", _tiff),
    (b"MM\x00+", _tiff),
    (b"\x59\xa6\x6a\x95", _sunras),
    (b"#?RADIANCE", _hdr),
    (b"#?RGBE", _hdr),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", _jp2),
    (b"\xff\x4f\xff\x51", _j2k),
)
