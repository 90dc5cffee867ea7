"""EXIF orientation: load_image turns files and bytes upright as every viewer does, for all 8 orientations
and every container that carries one (JPEG APP1, PNG eXIf, WebP EXIF, TIFF's own tag), against a
reference built from the EXIF spec's words and against OpenCV's own EXIF handling; exif_orientation=False
keeps the stored pixels; and through the demo model a rotated, tagged scene is answered as the upright one.
"""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from runtime.image import exif_transpose, load_image
from runtime.image_header import exif_orientation, read_header
from tests.conftest import ROOT, run_cli

# ----------------------------------------------------------------------------- the reference

# EXIF 2.3, tag 0x0112: where the stored image's 0th row and 0th column are on the displayed picture.
SPEC = {1: ("top", "left"), 2: ("top", "right"), 3: ("bottom", "right"), 4: ("bottom", "left"),
        5: ("left", "top"), 6: ("right", "top"), 7: ("right", "bottom"), 8: ("left", "bottom")}


def stored_as(upright: np.ndarray, orientation: int) -> np.ndarray:
    """The upright picture [H, W, C] as a camera stores it under `orientation`, from SPEC's words alone."""
    H, W = upright.shape[:2]
    row_side, col_side = SPEC[orientation]
    transposed = row_side in ("left", "right")  # stored rows run along the displayed columns
    h, w = (W, H) if transposed else (H, W)
    r, c = np.mgrid[0:h, 0:w]
    along_row = {"top": r, "bottom": H - 1 - r, "left": r, "right": W - 1 - r}[row_side]  # stored row -> y or x
    along_col = {"left": c, "right": W - 1 - c, "top": c, "bottom": H - 1 - c}[col_side]  # stored col -> x or y
    y, x = (along_col, along_row) if transposed else (along_row, along_col)
    return upright[y, x]


UPRIGHT = np.random.default_rng(0).integers(0, 256, (6, 11, 3), dtype=np.uint8)  # RGB [H, W, 3], asymmetric


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_transpose_undoes_every_orientation(orientation):
    stored = stored_as(UPRIGHT, orientation)
    assert np.array_equal(exif_transpose(stored, orientation), UPRIGHT)
    if orientation != 1:  # the case tests something
        assert stored.shape != UPRIGHT.shape or not np.array_equal(stored, UPRIGHT)


def test_the_spec_reference_agrees_with_numpy():
    """6 is stored turned 90 degrees counter-clockwise (displayed: turn it clockwise), 8 the other way."""
    assert np.array_equal(stored_as(UPRIGHT, 6), np.rot90(UPRIGHT, 1))
    assert np.array_equal(stored_as(UPRIGHT, 8), np.rot90(UPRIGHT, -1))
    assert np.array_equal(stored_as(UPRIGHT, 3), UPRIGHT[::-1, ::-1])
    assert np.array_equal(stored_as(UPRIGHT, 5), UPRIGHT.transpose(1, 0, 2))


# ----------------------------------------------------------------------------- files carrying EXIF


def exif_payload(orientation: int, bo: str = "<", typ: int = 3) -> bytes:
    """A minimal EXIF payload: a TIFF header and IFD0 holding one Orientation entry (SHORT, or LONG if typ=4)."""
    value = struct.pack(bo + "HH", orientation, 0) if typ == 3 else struct.pack(bo + "I", orientation)
    return ((b"II*\0" if bo == "<" else b"MM\0*") + struct.pack(bo + "I", 8) + struct.pack(bo + "H", 1)
            + struct.pack(bo + "HHI", 0x0112, typ, 1) + value + struct.pack(bo + "I", 0))


def jpeg_with_exif(bgr: np.ndarray, orientation: int, bo: str = "<", quality: int = 95) -> bytes:
    """OpenCV's JPEG with an APP1 "Exif" segment after its APP0 (JFIF), where cameras put it."""
    jpg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()
    assert jpg[2:4] == b"\xff\xe0"
    at = 4 + struct.unpack(">H", jpg[4:6])[0]
    app1 = b"Exif\0\0" + exif_payload(orientation, bo)
    return jpg[:at] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpg[at:]


def png_with_exif(bgr: np.ndarray, orientation: int, prefix: bytes = b"") -> bytes:
    png = cv2.imencode(".png", bgr)[1].tobytes()
    data = prefix + exif_payload(orientation)
    chunk = struct.pack(">I", len(data)) + b"eXIf" + data + struct.pack(">I", zlib.crc32(b"eXIf" + data))
    return png[:33] + chunk + png[33:]  # after the signature and IHDR


def webp_with_exif(bgr: np.ndarray, orientation: int, prefix: bytes = b"") -> bytes:
    """A lossless WebP in the extended (VP8X) layout with an EXIF chunk after the image."""
    def chunk(fourcc, data):
        return fourcc + struct.pack("<I", len(data)) + data + b"\0" * (len(data) & 1)
    webp = cv2.imencode(".webp", bgr, [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes()
    h, w = bgr.shape[:2]
    vp8x = bytes([0x08, 0, 0, 0]) + (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little")  # EXIF flag
    body = b"WEBP" + chunk(b"VP8X", vp8x) + webp[12:] + chunk(b"EXIF", prefix + exif_payload(orientation))
    return b"RIFF" + struct.pack("<I", len(body)) + body


def tiff_with_orientation(bgr: np.ndarray, orientation: int, bo: str = "<") -> bytes:
    """An uncompressed RGB TIFF, one strip, with the Orientation tag in IFD0."""
    h, w = bgr.shape[:2]
    pixels = np.ascontiguousarray(bgr[:, :, ::-1]).tobytes()
    tags = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 3, "bps"), (259, 3, 1, 1), (262, 3, 1, 2), (273, 4, 1, "data"),
            (274, 3, 1, orientation), (277, 3, 1, 3), (278, 4, 1, h), (279, 4, 1, len(pixels))]
    bps_at = 8 + 2 + 12 * len(tags) + 4
    where = {"bps": bps_at, "data": bps_at + 6}
    out = (b"II*\0" if bo == "<" else b"MM\0*") + struct.pack(bo + "I", 8) + struct.pack(bo + "H", len(tags))
    for tag, typ, n, v in tags:
        v = where.get(v, v)
        field = struct.pack(bo + "HH", v, 0) if typ == 3 and n == 1 else struct.pack(bo + "I", v)
        out += struct.pack(bo + "HHI", tag, typ, n) + field
    return out + struct.pack(bo + "I", 0) + struct.pack(bo + "HHH", 8, 8, 8) + pixels


LOSSLESS = {"png": png_with_exif, "webp": webp_with_exif, "tiff": tiff_with_orientation}


@pytest.mark.parametrize("container", LOSSLESS)
@pytest.mark.parametrize("orientation", range(1, 9))
def test_lossless_files_come_out_upright(container, orientation, tmp_path):
    stored = stored_as(UPRIGHT, orientation)  # RGB
    data = LOSSLESS[container](stored[:, :, ::-1], orientation)
    assert read_header(data).orientation == orientation
    path = tmp_path / f"o{orientation}.{container}"
    path.write_bytes(data)
    for source in (data, path):
        assert np.array_equal(load_image(source), UPRIGHT)
        assert np.array_equal(load_image(source, exif_orientation=False), stored)  # as stored


@pytest.mark.parametrize("bo", ["<", ">"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_comes_out_upright(orientation, bo):
    """Exact pixels: the stored picture as OpenCV decodes it, turned by the spec reference; and what OpenCV's
    own EXIF handling (IMREAD_COLOR) gives."""
    stored_bgr = stored_as(np.repeat(np.repeat(UPRIGHT, 8, 0), 8, 1), orientation)[:, :, ::-1]
    data = jpeg_with_exif(np.ascontiguousarray(stored_bgr), orientation, bo)
    as_stored = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
    upright = load_image(data)
    assert np.array_equal(upright, exif_transpose(as_stored, orientation))
    assert np.array_equal(stored_as(upright, orientation), as_stored)
    opencv = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(upright, cv2.cvtColor(opencv, cv2.COLOR_BGR2RGB))
    assert np.array_equal(load_image(data, exif_orientation=False), as_stored)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_png_agrees_with_opencvs_exif_handling(orientation):
    data = png_with_exif(stored_as(UPRIGHT, orientation)[:, :, ::-1], orientation)
    opencv = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # OpenCV applies EXIF here
    assert np.array_equal(load_image(data), cv2.cvtColor(opencv, cv2.COLOR_BGR2RGB))


@pytest.mark.parametrize("make", [lambda o: png_with_exif(UPRIGHT, o, prefix=b"Exif\0\0"),
                                  lambda o: webp_with_exif(UPRIGHT, o, prefix=b"Exif\0\0")],
                         ids=["png", "webp"])
def test_exif_with_jpegs_prefix(make):
    assert read_header(make(6)).orientation == 6


@pytest.mark.parametrize("payload,expected", [
    (exif_payload(6, ">", typ=4), 6),  # LONG instead of SHORT
    (exif_payload(0), 1),  # out of range: ignored, as viewers do
    (exif_payload(9), 1),
    (exif_payload(6)[:14], 1),  # cut inside the entry
    (b"II*\0" + struct.pack("<I", 10**6), 1),  # IFD0 past the end
    (b"MM\0*" + struct.pack(">IH", 8, 65535) + b"\0" * 12, 1),  # a huge entry count, one zero entry
    (b"nonsense", 1),
    (b"", 1),
])
def test_damaged_exif_reads_as_upright(payload, expected):
    assert exif_orientation(payload) == expected


def test_app1_that_is_not_exif_is_ignored():
    jpg = jpeg_with_exif(UPRIGHT, 6)
    xmp = jpg.replace(b"Exif\0\0", b"http:/", 1)  # an XMP APP1 segment of the same length
    assert read_header(xmp).orientation == 1
    assert load_image(xmp).shape == UPRIGHT.shape


# ----------------------------------------------------------------------------- through the model

QUESTION = "Where is the red triangle?"  # samples/scenes.json: scene_2, "Top right."


@pytest.fixture(scope="module")
def rotated_scene(tmp_path_factory):
    """samples/scene_2.png stored turned 90 degrees counter-clockwise, tagged 6 (display: turn it clockwise)."""
    scene = cv2.imread(str(ROOT / "samples" / "scene_2.png"), cv2.IMREAD_COLOR)  # BGR [H, W, 3]
    path = tmp_path_factory.mktemp("exif") / "scene_2_rot.png"
    path.write_bytes(png_with_exif(np.ascontiguousarray(np.rot90(scene, 1)), 6))
    return path


def test_demo_model_answers_the_rotated_scene_as_the_upright_one(demo_engine, rotated_scene):
    from runtime import FlashVL

    vl = FlashVL.load(demo_engine)
    upright = vl.generate(str(ROOT / "samples" / "scene_2.png"), QUESTION, max_new_tokens=8)
    assert upright.text == "Top right."
    assert vl.generate(str(rotated_scene), QUESTION, max_new_tokens=8).text == upright.text
    raw = FlashVL.load(demo_engine, exif_orientation=False)
    assert not np.array_equal(raw.prepare_image(str(rotated_scene)).pixels,
                              vl.prepare_image(str(rotated_scene)).pixels)
    assert raw.generate(str(rotated_scene), QUESTION, max_new_tokens=8).text != upright.text  # (red is top left)


def test_cli_flag(demo_engine, rotated_scene):
    def answer(*extra):
        proc = run_cli("-m", "runtime.run", "--engine", str(demo_engine), "--image", str(rotated_scene),
                       "--prompt", QUESTION, "--max-new-tokens", "8", *extra)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    assert answer() == "Top right."
    assert answer("--no-exif-orientation") != "Top right."
