"""Tests for runtime/image.py and runtime/preprocess.py: parity with PIL and the HF SigLIP processor,
conversions, errors.

The references (PIL, transformers) are imported here only; the runtime never imports them.
"""

import os

import cv2
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
import pytest

from tests.extras import needs

needs("export")

from PIL import Image
from transformers.image_transforms import convert_to_rgb
from transformers.image_utils import PILImageResampling
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from runtime.errors import ImageError
from runtime.image import load_image
from runtime.preprocess import preprocess, resize_pil_bicubic
from runtime.manifest import PreprocessSpec

SPEC = PreprocessSpec(
    height=512, width=512, resample="pil_bicubic", rescale=1 / 255,
    mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), alpha_background=(255, 255, 255))
ONE_LEVEL = 1 / 255 / 0.5  # one 8-bit level after rescale and normalize with std 0.5


# ----------------------------------------------------------------------------- test images


def _noise(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _gradient(h, w):
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255 * x / max(w - 1, 1)
    g = 255 * y / max(h - 1, 1)
    b = 127.5 + 127.5 * np.sin((x + y) / 37.0)
    return np.rint(np.stack([r, g, b], axis=-1)).astype(np.uint8)


def _edges(h, w):
    """Hard-edged shapes and text: the worst case for ringing and clipping."""
    img = np.full((h, w, 3), (30, 200, 90), np.uint8)
    cv2.rectangle(img, (w // 10, h // 10), (w // 2, h // 2), (255, 255, 255), -1)
    cv2.circle(img, (2 * w // 3, 2 * h // 3), min(h, w) // 5, (0, 0, 0), -1)
    cv2.line(img, (0, h - 1), (w - 1, 0), (255, 0, 0), 3)
    cv2.putText(img, "Flash-VL 123", (w // 20, h // 3), cv2.FONT_HERSHEY_SIMPLEX, max(h, w) / 600, (0, 0, 255), 2)
    img[::7, ::5] = (255, 255, 0)
    return img


def _camera(h, w):
    """A camera-like frame: smooth scene, sharp objects, sensor noise."""
    img = (_gradient(h, w).astype(np.int16) // 2 + _edges(h, w).astype(np.int16) // 2)
    img += np.random.default_rng(1).integers(-6, 7, (h, w, 3), dtype=np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


PARITY_CASES = {
    "upscale_100x77": lambda: _noise(77, 100, seed=2),
    "camera_1920x1080": lambda: _camera(1080, 1920),
    "portrait_1080x1920": lambda: _camera(1920, 1080),  # Pillow 13 resizes this one vertical-first
    "downscale_800x600": lambda: _edges(600, 800),
    "exact_512x512": lambda: _noise(512, 512, seed=3),
    "row_1x300": lambda: _noise(1, 300, seed=4),
    "column_300x1": lambda: _gradient(300, 1),
    "edges_640x480": lambda: _edges(480, 640),
    "noise_333x999": lambda: _noise(333, 999, seed=5),
    "gradient_700x700": lambda: _gradient(700, 700),
}


def _hf_reference(rgb: np.ndarray) -> np.ndarray:
    processor = SiglipImageProcessorPil(
        size={"height": 512, "width": 512}, resample=PILImageResampling.BICUBIC,
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    out = processor(images=Image.fromarray(rgb), return_tensors="np")["pixel_values"]
    return np.asarray(out)


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("name", sorted(PARITY_CASES))
def test_preprocess_matches_hf_siglip_processor(name):
    rgb = PARITY_CASES[name]()
    ours = preprocess(rgb, SPEC)
    ref = _hf_reference(rgb)
    assert ours.shape == ref.shape == (1, 3, 512, 512)
    assert ours.dtype == np.float32
    diff = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
    # Observed with Pillow 13.0 / transformers 5.24: max diff 0.0 and 100% of values
    # equal on every case (the port is bit-exact).  The contract is one 8-bit level.
    assert diff.max() <= ONE_LEVEL + 1e-6, f"{name}: max diff {diff.max()}"
    assert (diff == 0).mean() >= 0.99999, f"{name}: only {(diff == 0).mean():.6f} exact"


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_file_to_pixels_matches_hf_end_to_end(tmp_path, suffix):
    """Decode + RGBA/gray handling + resize + normalize, against PIL.Image.open + the processor."""
    bgr = _camera(300, 400)
    path = tmp_path / f"scene{suffix}"
    if suffix == ".png":
        alpha = _gradient(300, 400)[:, :, :1]
        cv2.imwrite(str(path), np.concatenate([bgr, alpha], axis=-1))  # BGRA with varying alpha
    else:
        cv2.imwrite(str(path), bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
    ours = preprocess(load_image(path), SPEC)
    processor = SiglipImageProcessorPil(
        size={"height": 512, "width": 512}, resample=PILImageResampling.BICUBIC,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    ref = np.asarray(processor(images=Image.open(path), return_tensors="np")["pixel_values"])
    diff = np.abs(ours.astype(np.float64) - ref)
    # Observed: bit-exact for both (OpenCV 5.0 and Pillow 13.0 both decode JPEG with
    # libjpeg-turbo); another JPEG decoder could differ by a level here and there.
    assert diff.max() <= ONE_LEVEL + 1e-6
    assert (diff == 0).mean() >= 0.999


@pytest.mark.parametrize("name", sorted(PARITY_CASES))
def test_resize_matches_pil_bit_exact(name):
    rgb = PARITY_CASES[name]()
    for height, width in ((512, 512), (224, 384), (rgb.shape[0], 257), (97, rgb.shape[1])):
        ref = np.asarray(Image.fromarray(rgb).resize((width, height), Image.BICUBIC))
        got = resize_pil_bicubic(rgb, height, width)
        np.testing.assert_array_equal(got, ref, err_msg=f"{name} -> {height}x{width}")


@settings(max_examples=60, deadline=None, database=None)
@given(h=st.integers(1, 64), w=st.integers(1, 64), oh=st.integers(1, 64), ow=st.integers(1, 64),
       seed=st.integers(0, 2**32 - 1))
def test_resize_matches_pil_random_sizes(h, w, oh, ow, seed):
    rgb = _noise(h, w, seed)
    ref = np.asarray(Image.fromarray(rgb).resize((ow, oh), Image.BICUBIC))
    np.testing.assert_array_equal(resize_pil_bicubic(rgb, oh, ow), ref)


@settings(max_examples=100, deadline=None, database=None)
@given(h=st.integers(1, 64), w=st.integers(1, 64), oh=st.integers(1, 64), ow=st.integers(1, 64),
       colour=st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)))
def test_resize_constant_stays_constant(h, w, oh, ow, colour):
    rgb = np.empty((h, w, 3), np.uint8)
    rgb[:] = colour
    out = resize_pil_bicubic(rgb, oh, ow)
    assert out.shape == (oh, ow, 3)
    assert out.dtype == np.uint8
    assert out.flags.c_contiguous
    assert (out == np.array(colour, np.uint8)).all()


@pytest.mark.parametrize("height, width", [(10, 65), (10, 66), (60, 91), (60, 90), (130, 200), (50, 10)])
def test_resize_pass_order_matches_pil(height, width):
    """Around Pillow 13's switch to vertical-first (120x120: h=10 flips at w=66, h=60 at w=91)."""
    rgb = _edges(120, 120)
    ref = np.asarray(Image.fromarray(rgb).resize((width, height), Image.BICUBIC))
    np.testing.assert_array_equal(resize_pil_bicubic(rgb, height, width), ref)


def test_resize_same_size_is_a_copy():
    rgb = _noise(20, 30)
    out = resize_pil_bicubic(rgb, 20, 30)
    np.testing.assert_array_equal(out, rgb)
    assert not np.shares_memory(out, rgb)


def test_resize_accepts_non_contiguous_views():
    big = _noise(100, 160)
    view = big[10:90:2, ::-1]
    ref = np.asarray(Image.fromarray(np.ascontiguousarray(view)).resize((33, 21), Image.BICUBIC))
    np.testing.assert_array_equal(resize_pil_bicubic(view, 21, 33), ref)


# ----------------------------------------------------------------------------- conversions


def test_gray_png_replicates_to_rgb(tmp_path):
    gray = _gradient(40, 50)[:, :, 0]
    path = tmp_path / "gray.png"
    cv2.imwrite(str(path), gray)
    got = load_image(path)
    np.testing.assert_array_equal(got, np.repeat(gray[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(got, convert_to_rgb(Image.open(path), return_numpy=True))


def _all_colour_alpha_pairs() -> np.ndarray:
    """RGBA [256, 256, 4]: every (value, alpha) pair in each channel, channels shuffled."""
    v, a = np.mgrid[0:256, 0:256].astype(np.uint8)
    return np.stack([v, v[::-1], v.T, a], axis=-1)


def test_rgba_png_composites_like_transformers(tmp_path):
    rgba = _all_colour_alpha_pairs()
    path = tmp_path / "rgba.png"
    cv2.imwrite(str(path), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    got = load_image(path)
    np.testing.assert_array_equal(got, convert_to_rgb(Image.open(path), return_numpy=True))
    # PIL's fixed point lands exactly on the textbook round((a*fg + (255-a)*bg) / 255)
    a = rgba[:, :, 3:].astype(np.float64)
    np.testing.assert_array_equal(got, np.floor((a * rgba[:, :, :3] + (255 - a) * 255) / 255 + 0.5))


def test_rgba_composites_on_a_custom_background():
    rgba = _all_colour_alpha_pairs()
    background = (12, 200, 77)
    got = load_image(rgba, channels="rgb", background=background)
    ref = Image.alpha_composite(Image.new("RGBA", (256, 256), background + (255,)), Image.fromarray(rgba))
    np.testing.assert_array_equal(got, np.asarray(ref.convert("RGB")))


def test_gray_alpha_png_composites_like_transformers(tmp_path):
    v, a = np.mgrid[0:256, 0:256].astype(np.uint8)
    path = tmp_path / "la.png"
    Image.fromarray(np.stack([v, a], axis=-1), "LA").save(path)
    np.testing.assert_array_equal(load_image(path), convert_to_rgb(Image.open(path), return_numpy=True))


def test_16bit_png_is_rounded_to_8bit(tmp_path):
    v16 = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    bgr16 = np.stack([v16, v16[::-1], v16.T], axis=-1)
    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), bgr16)
    expected = np.rint(bgr16[:, :, ::-1].astype(np.float64) / 257).astype(np.uint8)
    np.testing.assert_array_equal(load_image(path), expected)
    np.testing.assert_array_equal(load_image(bgr16), expected)


def test_bgr_and_rgb_arrays_agree():
    bgr = _noise(31, 17, seed=7)
    rgb = load_image(bgr)
    np.testing.assert_array_equal(rgb, bgr[:, :, ::-1])
    np.testing.assert_array_equal(load_image(bgr[:, :, ::-1], channels="rgb"), rgb)
    bgra = np.concatenate([bgr, _noise(31, 17, seed=8)[:, :, :1]], axis=-1)
    rgba = np.concatenate([bgr[:, :, ::-1], bgra[:, :, 3:]], axis=-1)
    np.testing.assert_array_equal(load_image(bgra), load_image(rgba, channels="rgb"))


def test_float_array_input():
    u8 = _noise(9, 11, seed=9)
    np.testing.assert_array_equal(load_image(u8.astype(np.float32) / 255, channels="rgb"), u8)
    f = np.random.default_rng(10).random((9, 11, 3))
    np.testing.assert_array_equal(load_image(f, channels="rgb"), np.rint(f * 255).astype(np.uint8))
    np.testing.assert_array_equal(load_image(f[:, :, 0]), load_image(np.rint(f[:, :, 0] * 255).astype(np.uint8)))


def test_file_bytes_and_array_agree(tmp_path):
    bgr = _edges(60, 80)
    ok, encoded = cv2.imencode(".png", bgr)
    assert ok
    path = tmp_path / "фото 1.png"  # non-ASCII, with a space
    path.write_bytes(encoded.tobytes())
    from_file = load_image(str(path))
    for other in (load_image(encoded.tobytes()), load_image(bytearray(encoded.tobytes())),
                  load_image(memoryview(encoded.tobytes())), load_image(bgr)):
        np.testing.assert_array_equal(other, from_file)
    assert from_file.dtype == np.uint8 and from_file.flags.c_contiguous and from_file.shape == (60, 80, 3)


def test_output_never_aliases_the_input():
    rgb = _noise(8, 8)
    out = load_image(rgb, channels="rgb")
    assert not np.shares_memory(out, rgb)


def test_jpeg_with_trailing_data_still_loads(tmp_path):
    """Motion photos and some cameras append data after the end-of-image marker."""
    ok, encoded = cv2.imencode(".jpg", _camera(48, 64))
    path = tmp_path / "motion.jpg"
    path.write_bytes(encoded.tobytes() + b"\x00\x00ftypmp42" + bytes(range(256)) * 4)
    np.testing.assert_array_equal(load_image(path), load_image(encoded.tobytes()))


def test_preprocess_output_layout():
    rgb = _gradient(30, 40)
    pixels = preprocess(rgb, SPEC)
    assert pixels.shape == (1, 3, 512, 512) and pixels.dtype == np.float32 and pixels.flags.c_contiguous
    resized = resize_pil_bicubic(rgb, 512, 512)
    np.testing.assert_allclose(pixels[0, 1], (resized[:, :, 1] / 255 - 0.5) / 0.5, atol=1e-6)


# ----------------------------------------------------------------------------- errors


def _error(source, **kwargs) -> str:
    with pytest.raises(ImageError) as info:
        load_image(source, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message
    return message


def test_missing_path(tmp_path):
    path = tmp_path / "nope.png"
    message = _error(path)
    assert str(path) in message and "not found" in message


def test_directory(tmp_path):
    message = _error(str(tmp_path))
    assert str(tmp_path) in message and "directory" in message


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    message = _error(path)
    assert str(path) in message and "empty" in message


def test_text_file_named_png(tmp_path):
    path = tmp_path / "photo.png"
    path.write_text("hello, this is not a picture\n")
    message = _error(path)
    assert str(path) in message and "not an image OpenCV can decode" in message and "b'hello" in message
    assert "29 bytes" in message


def test_truncated_png(tmp_path):
    ok, encoded = cv2.imencode(".png", _noise(64, 64))
    data = encoded.tobytes()
    for cut in (len(data) // 2, len(data) - 12):  # inside the pixel data; only IEND missing
        path = tmp_path / f"cut{cut}.png"
        path.write_bytes(data[:cut])
        message = _error(path)
        assert str(path) in message and "truncated PNG" in message


def test_truncated_jpeg(tmp_path):
    ok, encoded = cv2.imencode(".jpg", _camera(120, 160))
    data = encoded.tobytes()
    for cut in (len(data) // 3, len(data) - 2, len(data) - 1):
        path = tmp_path / f"cut{cut}.jpg"
        path.write_bytes(data[:cut])
        message = _error(path)
        assert str(path) in message and "truncated JPEG" in message
    message = _error(data[: len(data) // 2])
    assert "image bytes" in message and "truncated JPEG" in message


def test_garbage_and_empty_bytes():
    assert "image bytes" in _error(b"GIF89a but not really")
    assert "image bytes" in _error(b"")


def test_unreadable_file(tmp_path, monkeypatch):
    path = tmp_path / "locked.png"
    cv2.imwrite(str(path), _noise(4, 4))

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(np, "fromfile", denied)
    message = _error(path)
    assert str(path) in message and "permission denied" in message


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_for_real(tmp_path):
    path = tmp_path / "locked.png"
    cv2.imwrite(str(path), _noise(4, 4))
    path.chmod(0)
    try:
        assert "permission denied" in _error(path)
    finally:
        path.chmod(0o644)


@pytest.mark.parametrize("arr", [
    np.zeros((4, 4, 2), np.uint8),
    np.zeros((4, 4, 5), np.uint8),
    np.zeros((0, 4, 3), np.uint8),
    np.zeros((4, 0), np.uint8),
    np.zeros((1, 4, 4, 3), np.uint8),
    np.zeros(12, np.uint8),
    np.zeros((4, 4, 3), np.int64),
    np.zeros((4, 4, 3), bool),
    np.full((4, 4, 3), 2.0, np.float32),
    np.full((4, 4, 3), np.nan, np.float64),
], ids=["hxwx2", "hxwx5", "zero_rows", "zero_cols", "4d", "1d", "int64", "bool", "float_above_1", "nan"])
def test_bad_arrays(arr):
    assert "image array" in _error(arr)


def test_bad_channels_value():
    message = _error(_noise(4, 4), channels="BGR")
    assert "channels" in message and "'BGR'" in message


@pytest.mark.parametrize("background", [(255, 255), (0, 0, 256), "white", (1.0, 0, 0)])
def test_bad_background(background):
    assert "background" in _error(_noise(4, 4), background=background)


def test_unsupported_source_type():
    message = _error(Image.fromarray(_noise(4, 4)))
    assert "PIL" in message and "image source" in message


@pytest.mark.parametrize("rgb, height, width", [
    (np.zeros((4, 4), np.uint8), 2, 2),
    (np.zeros((4, 4, 3), np.float32), 2, 2),
    (np.zeros((4, 4, 3), np.uint8), 0, 2),
    (np.zeros((4, 4, 3), np.uint8), 2, 2.5),
])
def test_resize_rejects_bad_input(rgb, height, width):
    with pytest.raises(ImageError) as info:
        resize_pil_bicubic(rgb, height, width)
    assert "resize_pil_bicubic" in str(info.value) and "\n" not in str(info.value)
