"""Tests for runtime/image_header.py and the pixel limit of runtime/image.py: every format's header size
equals its decoded size, garbage never hangs or crashes the reader, and too-large images are refused
from their header (a 30000x30000 PNG bomb costs a few MB and milliseconds) with one line that says how
to raise the limit: in load_image, FlashVL.load, the CLI and the camera/video loop.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import subprocess
import sys
import time
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.errors import FlashVLError, ImageError
from runtime.image import DEFAULT_MAX_PIXELS, load_image
from runtime.image_header import MAX_STEPS, Header, HeaderError, read_header
from tests.conftest import ROOT, assert_one_line_error, run_cli

RNG = np.random.default_rng(0)

# ----------------------------------------------------------------------------- files written by hand


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int, height: int) -> bytes:
    """A 1-bit palette PNG of zeros, compressed a block of rows at a time so this test stays small in
    memory: 30000x30000 is 110 KB on disk and 2.7 GB of BGR pixels once decoded."""
    z = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte, then 1 bit per pixel
    idat, left = [], height
    while left:
        n = min(256, left)
        idat.append(z.compress(row * n))
        left -= n
    idat.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 3, 0, 0, 0)  # bit depth 1, colour type 3 (palette)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"PLTE", b"\0\0\0\xff\xff\xff")
            + png_chunk(b"IDAT", b"".join(idat)) + png_chunk(b"IEND", b""))


def tiff_bytes(w: int, h: int, bo: str = "<", dim_type: int = 3, big: bool = False) -> bytes:
    """A TIFF header and IFD0 with just the size tags (no pixels): enough for the header reader."""
    if big:
        head = (b"II+\0" if bo == "<" else b"MM\0+") + struct.pack(bo + "HHQ", 8, 0, 16)
        ent = [struct.pack(bo + "HHQ", tag, 16, 1) + struct.pack(bo + "Q", v) for tag, v in ((256, w), (257, h))]
        return head + struct.pack(bo + "Q", 2) + b"".join(ent) + struct.pack(bo + "Q", 0)
    fmt = "HH" if dim_type == 3 else "I"
    vals = ((256, w), (257, h))
    ent = [struct.pack(bo + "HHI", tag, dim_type, 1) + struct.pack(bo + fmt, *((v, 0) if dim_type == 3 else (v,)))
           for tag, v in vals]
    return (b"II*\0" if bo == "<" else b"MM\0*") + struct.pack(bo + "I", 8) + struct.pack(bo + "H", 2) \
        + b"".join(ent) + struct.pack(bo + "I", 0)


def jpeg_bytes(img: np.ndarray, **params) -> bytes:
    flags = [cv2.IMWRITE_JPEG_QUALITY, 90] + [x for k, v in params.items() for x in (getattr(cv2, k), v)]
    return cv2.imencode(".jpg", img, flags)[1].tobytes()


def with_segments(jpeg: bytes, *segments: bytes) -> bytes:
    """`segments` (marker code + payload) inserted right after SOI, before the frame header."""
    out = b"".join(b"\xff" + s[:1] + struct.pack(">H", len(s) - 1 + 2) + s[1:] for s in segments)
    return jpeg[:2] + out + jpeg[2:]


def encoded(ext: str, img: np.ndarray, *params) -> bytes:
    ok, buf = cv2.imencode(ext, img, list(params))
    assert ok, ext
    return buf.tobytes()


IMG = RNG.integers(0, 256, (37, 53, 3), dtype=np.uint8)  # [H, W, 3]: no square, no multiple of 8
GRAY = cv2.cvtColor(IMG, cv2.COLOR_BGR2GRAY)
FORMATS = {  # what OpenCV writes, in every layout the header reader tells apart
    "png": lambda: encoded(".png", IMG),
    "jpeg": lambda: encoded(".jpg", IMG),
    "jpeg-progressive": lambda: encoded(".jpg", IMG, cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
    "bmp": lambda: encoded(".bmp", IMG),
    "tiff": lambda: encoded(".tiff", IMG),
    "webp-lossy": lambda: encoded(".webp", IMG, cv2.IMWRITE_WEBP_QUALITY, 80),
    "webp-lossless": lambda: encoded(".webp", IMG, cv2.IMWRITE_WEBP_QUALITY, 101),
    "gif": lambda: encoded(".gif", IMG),
    "ppm": lambda: encoded(".ppm", IMG),
    "pgm": lambda: encoded(".pgm", GRAY),
    "pbm-ascii": lambda: encoded(".pbm", GRAY, cv2.IMWRITE_PXM_BINARY, 0),
    "pam": lambda: encoded(".pam", IMG),
    "pfm": lambda: encoded(".pfm", IMG.astype(np.float32) / 255),
    "sunras": lambda: encoded(".ras", IMG),
    "hdr": lambda: encoded(".hdr", IMG.astype(np.float32) / 255),
    "jp2": lambda: encoded(".jp2", cv2.resize(IMG, (530, 370))),
}


# ----------------------------------------------------------------------------- the header reader


@pytest.mark.parametrize("name", FORMATS)
def test_header_size_is_the_decoded_size(name):
    data = FORMATS[name]()
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    for src in (data, io.BytesIO(data)):
        h = read_header(src)
        assert h is not None and (h.width, h.height) == (img.shape[1], img.shape[0]), (name, h)
        assert h.orientation == 1


def _avif(img) -> bytes:
    try:
        ok, buf = cv2.imencode(".avif", img)
    except cv2.error:
        ok = False
    if not ok:
        pytest.skip(f"this OpenCV ({cv2.__version__}) cannot write AVIF")
    return buf.tobytes()


def test_avif_is_sized_from_its_ispe_box():
    data = _avif(cv2.resize(IMG, (245, 123)))
    h = read_header(data)
    assert (h.format, h.width, h.height) == ("avif", 245, 123), h
    assert read_header(data[:40]) == Header("avif", None, None)  # cut before its meta box: the decoder decides
    mp4 = struct.pack(">I", 16) + b"ftypisom" + b"\0" * 4  # an ISO-BMFF file that is a video, not an image
    assert read_header(mp4) is None


def test_formats_without_a_header_reader_say_so():
    assert read_header(b"hello, I am not a picture") is None
    assert read_header(b"") is None


@pytest.mark.parametrize("data,size", [
    (tiff_bytes(70000, 3, "<", 4), (70000, 3)),  # LONG sizes
    (tiff_bytes(300, 200, ">", 3), (300, 200)),  # big-endian, SHORT sizes
    (tiff_bytes(300, 200, ">", 4), (300, 200)),
    (tiff_bytes(5, 80000, "<", big=True), (5, 80000)),  # BigTIFF
    (b"P3\n# a comment\n 12 # another\n# and one more\n\t34\n255\n", (12, 34)),
    (b"P1 #c\n7\r\n9\n0101", (7, 9)),
    (b"P6\n" + b"#" * 100_000 + b"\n640 480\n255\n" + b"\0" * 10, (640, 480)),  # a header longer than one read
    (b"P7\nWIDTH 11\nHEIGHT 12\nDEPTH 3\nMAXVAL 255\nENDHDR\n", (11, 12)),
    (b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n+X 30 -Y 20\n", (30, 20)),  # X first: stored column by column
    (b"\xff\x4f\xff\x51\x00\x29\x00\x00" + struct.pack(">IIII", 1000, 700, 10, 20) + b"\0" * 30, (990, 680)),
])
def test_header_layouts_opencv_does_not_write(data, size):
    h = read_header(data)
    assert (h.width, h.height) == size


def test_bmp_sizes_top_down_and_core_header():
    bmp = bytearray(encoded(".bmp", IMG))
    struct.pack_into("<i", bmp, 22, -37)  # a negative height: rows stored top-down
    assert (read_header(bytes(bmp)).width, read_header(bytes(bmp)).height) == (53, 37)
    core = b"BM" + b"\0" * 12 + struct.pack("<IHHHH", 12, 640, 480, 1, 24)  # BITMAPCOREHEADER (OS/2 1.x)
    assert (read_header(core).width, read_header(core).height) == (640, 480)
    text = b"BMW drivers wrote this text file, it is no bitmap at all."
    assert read_header(text).width is None  # OpenCV decides: not an image


def test_webp_vp8x_canvas():
    vp8x = bytes([0, 0, 0, 0]) + (19999).to_bytes(3, "little") + (29).to_bytes(3, "little")
    body = b"WEBP" + b"VP8X" + struct.pack("<I", 10) + vp8x
    h = read_header(b"RIFF" + struct.pack("<I", len(body)) + body)
    assert (h.format, h.width, h.height) == ("webp", 20000, 30)


def test_jpeg_walk_skips_big_segments_fill_bytes_and_garbage():
    base = jpeg_bytes(IMG)
    app = [b"\xe2" + bytes(RNG.integers(0, 256, 65000, dtype=np.uint8)) for _ in range(3)]  # ICC-sized APP2s
    data = with_segments(base, *app)
    data = data[:2] + b"\xff\xff\xff" + data[2:]  # fill bytes before the first marker
    sof = data.index(b"\xff\xc0")
    data = data[:sof] + b"junk\x00\xff\x00" + data[sof:]  # garbage (and a stuffed FF00) before the frame header
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED).shape == IMG.shape  # libjpeg agrees
    h = read_header(data)
    assert (h.width, h.height) == (53, 37)
    f = CountingFile(data)
    assert read_header(f).width == 53
    assert f.bytes_read < 2048, f.bytes_read  # the APP segments were skipped, not read


class CountingFile(io.BytesIO):
    """A file object that counts the bytes read from it."""

    bytes_read = 0

    def read(self, n=-1):
        out = super().read(n)
        self.bytes_read += len(out)
        return out


def test_png_bomb_header_reads_a_few_bytes():
    f = CountingFile(bomb_png(30000, 30000))
    h = read_header(f)
    assert (h.width, h.height) == (30000, 30000)
    assert f.bytes_read < 256, f.bytes_read


def test_too_many_jpeg_segments_is_an_error_not_a_decode():
    empty_apps = [b"\xe3"] * (MAX_STEPS + 1)  # libjpeg would walk them all, then decode whatever SOF follows
    data = with_segments(jpeg_bytes(IMG), *empty_apps)
    with pytest.raises(HeaderError, match="segments"):
        read_header(data)
    with pytest.raises(ImageError, match=r"^image bytes: malformed header \(more than 4096 JPEG segments"):
        load_image(data)


MAGICS = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"II*\0", b"MM\0*", b"II+\0", b"RIFF\0\0\0\0WEBP",
          b"P6", b"P7", b"Pf", b"\x59\xa6\x6a\x95", b"#?RADIANCE", b"\0\0\0\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51"]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(MAGICS), st.binary(max_size=600))
def test_garbage_after_a_magic_never_raises_or_hangs(magic, tail):
    t0 = time.perf_counter()
    h = read_header(magic + tail)
    assert h is not None and time.perf_counter() - t0 < 1.0
    for v in (h.width, h.height):
        assert v is None or (isinstance(v, int) and v >= 0)
    assert 1 <= h.orientation <= 8


@pytest.mark.parametrize("name", ["png", "jpeg", "webp-lossy", "tiff", "bmp", "pam"])
def test_every_truncation_of_a_header_reads(name):
    data = FORMATS[name]()
    for n in range(min(len(data), 400)):
        read_header(data[:n])  # returns, whatever it finds


# ----------------------------------------------------------------------------- the limit in load_image

LIMIT_MSG = ("30000x30000 = 900.0 MP, over the limit of 64.0 MP; raise the limit with --max-image-pixels N or "
             "FlashVL.load(..., max_image_pixels=N)")


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    path.write_bytes(bomb_png(30000, 30000))
    return path


def test_default_limit():
    assert DEFAULT_MAX_PIXELS == 64_000_000


def test_png_bomb_is_refused_from_its_header_fast(bomb):
    assert bomb.stat().st_size < 200_000
    for source, where in ((bomb, str(bomb)), (bomb.read_bytes(), "image bytes")):
        t0 = time.perf_counter()
        with pytest.raises(ImageError) as e:
            load_image(source)
        assert time.perf_counter() - t0 < 2.0  # today's decode takes 30-40 s
        assert str(e.value).startswith(f"{where}: {LIMIT_MSG}") and "\n" not in str(e.value)


# The child caps its own address space (a regression then fails in a second instead of taking 5 GB of a
# shared machine) and reports VmHWM, the peak RSS of its own memory since exec: ru_maxrss would also count
# the pytest process it was forked from, which holds a loaded model by then.
CHILD = """
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from runtime.image import load_image
t0 = time.perf_counter()
try:
    load_image(sys.argv[1])
    error = None
except Exception as e:
    error = f"{type(e).__name__}: {e}"
seconds = time.perf_counter() - t0
hwm = [line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")]
print(json.dumps({"error": error, "s": seconds, "peak_rss_mb": int(hwm[0]) / 1024}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from Linux's /proc")
@pytest.mark.parametrize("kind", ["bomb", "sparse"])
def test_refusal_peak_memory(bomb, tmp_path, kind):
    """Peak RSS of a fresh process that refuses the bomb (the interpreter, NumPy and OpenCV are ~50 MB of it),
    and of one that refuses a 1 GB file (sparse, no disk used) that only its header shows too large."""
    path = bomb
    if kind == "sparse":
        path = tmp_path / "huge.png"
        with open(path, "wb") as f:
            f.write(bomb_png(30000, 30000)[:33])  # signature and IHDR
            f.truncate(1 << 30)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    print(f"{kind}: peak RSS {got['peak_rss_mb']:.0f} MB, {got['s'] * 1e3:.1f} ms")
    assert got["error"] is not None and got["error"].startswith(f"ImageError: {path}: {LIMIT_MSG}"), got
    assert got["peak_rss_mb"] < 300, got


def test_custom_limit_boundary():
    img = encoded(".png", np.zeros((100, 80, 3), np.uint8))
    assert load_image(img, max_pixels=8000).shape == (100, 80, 3)  # the limit itself is allowed
    with pytest.raises(ImageError, match=r"^image bytes: 80x100 = 8,000 pixels, over the limit of 7,999 pixels; "):
        load_image(img, max_pixels=7999)


def test_formats_without_a_header_reader_are_checked_after_decoding(monkeypatch):
    import runtime.image
    monkeypatch.setattr(runtime.image, "read_header", lambda src: None)  # a format this build sizes only by decoding
    png = encoded(".png", np.zeros((100, 80, 3), np.uint8))
    with pytest.raises(ImageError, match=r"^image bytes: 80x100 = 8,000 pixels, over the limit of 7,999 pixels"):
        load_image(png, max_pixels=7999)


@pytest.mark.parametrize("channels", ["bgr", "rgb"])
def test_arrays_get_the_same_limit(channels):
    arr = np.zeros((101, 100, 3), np.uint8)
    with pytest.raises(ImageError, match=r"^image array: 100x101 = 10,100 pixels, over the limit of 10,000 "
                                         r"pixels; raise the limit with --max-image-pixels N"):
        load_image(arr, channels, max_pixels=10_000)
    assert load_image(arr, channels, max_pixels=10_100).shape == (101, 100, 3)


@pytest.mark.parametrize("name,data", [
    ("png", b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 480, 8, 2, 0, 0, 0))
     + png_chunk(b"IEND", b"")),
    ("jpeg", None),
    ("gif", b"GIF89a" + struct.pack("<HH", 640, 0) + b"\0" * 20),
])
def test_zero_size_in_the_header(name, data):
    if data is None:  # a JPEG whose frame header says 0 rows (DNL, which no decoder here supports)
        data = bytearray(jpeg_bytes(IMG))
        struct.pack_into(">H", data, data.index(b"\xff\xc0") + 5, 0)
        data = bytes(data)
    with pytest.raises(ImageError, match=rf"^image bytes: the {name.upper()} header says \d+x\d+ pixels, an "
                                         rf"image without pixels; the file is damaged"):
        load_image(data)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "64000000", None, 2**30 + 1])
def test_max_pixels_must_be_a_positive_integer_up_to_opencvs_own_limit(bad):
    with pytest.raises(ImageError, match=r"max_pixels must be an integer in 1\.\.1073741824"):
        load_image(IMG, max_pixels=bad)


def test_a_side_too_long_to_resize_is_refused_under_the_pixel_limit():
    """1 x 2,000,000 is 2 MP, but the resize's tap tables grow with the long side: 400 MB for this one."""
    line = np.zeros((1, 2_000_000, 3), np.uint8)
    with pytest.raises(ImageError, match=r"^image array: 2000000x1 has a side over 65,535 pixels"):
        load_image(line)
    ok, png = cv2.imencode(".png", np.zeros((1, 70_000), np.uint8))
    with pytest.raises(ImageError, match=r"^image bytes: 70000x1 has a side over 65,535 pixels"):
        load_image(png.tobytes())


# ----------------------------------------------------------------------------- FlashVL, the CLI, streams


def test_flashvl_load_option(demo_engine, bomb):
    from runtime import FlashVL

    with pytest.raises(FlashVLError, match=r"max_image_pixels must be an integer in 1\.\.1073741824, got 0"):
        FlashVL.load(demo_engine, max_image_pixels=0)
    vl = FlashVL.load(demo_engine)
    with pytest.raises(ImageError, match=re.escape(LIMIT_MSG)):
        vl.generate(bomb, "Describe the image.", max_new_tokens=2)
    small = FlashVL.load(demo_engine, max_image_pixels=256 * 256 - 1)
    with pytest.raises(ImageError, match=r"samples/scene_1\.png: 256x256 = 65,536 pixels, over the limit of 65,535"):
        small.generate(str(ROOT / "samples" / "scene_1.png"), "Describe the image.", max_new_tokens=2)
    frames = [np.zeros((256, 256, 3), np.uint8)]
    with pytest.raises(ImageError, match=r"^image array: 256x256 = 65,536 pixels, over the limit"):
        with small.captions(frames, realtime=False) as events:  # the camera/video loop: frames are checked too
            list(events)


def run(engine, *extra):
    return run_cli("-m", "runtime.run", "--engine", str(engine), "--max-new-tokens", "4", *extra)


@pytest.mark.parametrize("value,needle", [("0", "--max-image-pixels must be an integer in 1..1073741824, got 0"),
                                          ("2000000000", "--max-image-pixels must be an integer in 1..1073741824"),
                                          ("lots", "--max-image-pixels: invalid int value: 'lots'")])
def test_cli_option_is_checked(demo_engine, value, needle):
    assert_one_line_error(run(demo_engine, "--max-image-pixels", value), needle)


def test_cli_refuses_the_bomb_and_the_option_raises_the_limit(demo_engine, bomb):
    assert_one_line_error(run(demo_engine, "--image", str(bomb)), str(bomb), LIMIT_MSG)
    scene = str(ROOT / "samples" / "scene_1.png")
    assert_one_line_error(run(demo_engine, "--image", scene, "--max-image-pixels", "65535"),
                          "256x256 = 65,536 pixels, over the limit of 65,535 pixels", "--max-image-pixels N")
    proc = run(demo_engine, "--image", scene, "--max-image-pixels", "65_536")
    assert proc.returncode == 0, proc.stderr


# ----------------------------------------------------------------------------- encoded bytes without end


def test_a_device_that_is_no_image_is_refused_after_its_first_bytes():
    with pytest.raises(ImageError, match=r"/dev/zero: not an image \(it begins with b'\\x00"):
        load_image("/dev/zero")  # before this bound: read until MemoryError


def test_a_regular_file_too_big_for_the_limit_is_refused_before_it_is_read(tmp_path):
    ok, png = cv2.imencode(".png", np.zeros((10, 10, 3), np.uint8))
    path = tmp_path / "padded.png"
    path.write_bytes(png.tobytes())
    with open(path, "r+b") as f:
        f.truncate(40 << 20)  # sparse: 40 MB of nothing after a 10x10 image
    with pytest.raises(ImageError, match=r"41,943,040 bytes, more than an image within the limit of 1,000 pixels"):
        load_image(str(path), max_pixels=1000)


def test_stdin_is_read_with_a_bound(demo_engine):
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    cli = [sys.executable, "-m", "runtime.run", "--engine", str(demo_engine), "--image", "-"]
    with open("/dev/zero", "rb") as zero:  # `--image - < /dev/zero`
        proc = subprocess.run(cli, cwd=ROOT, env=env, stdin=zero, capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc, "--image -: not an image")
    jpeg = (ROOT / "samples" / "street.jpg").read_bytes()
    feeder = subprocess.Popen(["sh", "-c", 'cat "$0" /dev/zero', str(ROOT / "samples" / "street.jpg")],
                              stdout=subprocess.PIPE)  # a JPEG, then bytes without end
    try:
        proc = subprocess.run([*cli, "--max-image-pixels", "1000000"], cwd=ROOT, env=env, stdin=feeder.stdout,
                              capture_output=True, text=True, timeout=120)
    finally:
        feeder.kill()
        feeder.wait()
    assert_one_line_error(proc, "--image -: more than 24,777,216 bytes", "--max-image-pixels")
    assert len(jpeg) < 24_777_216


def test_stdin_with_a_header_too_fragmented_to_size(demo_engine):
    """A JPEG start, then thousands of empty segments: the header walk gives up, in one line (was a traceback)."""
    data = b"\xff\xd8" + b"\xff\xe1\x00\x02" * (MAX_STEPS + 10) + b"\xff\xd9"
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "runtime.run", "--engine", str(demo_engine), "--image", "-"],
                          input=data, cwd=ROOT, env=env, capture_output=True, timeout=120)
    proc = subprocess.CompletedProcess(proc.args, proc.returncode, "", proc.stderr.decode())
    assert_one_line_error(proc, "malformed header (more than 4096 JPEG segments")



def test_tiff_sizes_of_every_integer_type_are_read():
    """libtiff takes a size tag of any integer type; a TIFF whose sizes were SLONG went through unsized
    (30000x30000: 2.7 GB decoded from 2.6 MB)."""
    signed = tiff_bytes(30000, 30000, "<", 9)  # SLONG
    assert (read_header(signed).width, read_header(signed).height) == (30000, 30000)
    with pytest.raises(ImageError, match="30000x30000 = 900.0 MP, over the limit"):
        load_image(signed)


def test_a_known_format_without_a_readable_size_is_not_decoded():
    no_size = b"II*\0" + struct.pack("<IH", 8, 1) + struct.pack("<HHII", 259, 3, 1, 1) + struct.pack("<I", 0)
    assert read_header(no_size) == Header("tiff", None, None)
    with pytest.raises(ImageError, match="a TIFF whose header gives no size .* re-save it as PNG or JPEG"):
        load_image(no_size)
