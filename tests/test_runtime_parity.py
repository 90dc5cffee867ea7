"""The runtime says what the PyTorch model says (tiny preset, fp32).

Greedy token ids from `runtime` (ONNX Runtime, NumPy, no torch) must equal those of
`export.reference` (PyTorch on the very weights of the engine folder), for several images
and prompts; the ONNX graphs' outputs must match the PyTorch modules to 1e-4.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.extras import needs

needs("export")

import torch

from export.reference import rebuild, run as reference_run
from runtime import FlashVL
from runtime.embedding import splice_image
from runtime.image import load_image
from runtime.preprocess import preprocess
from tests.conftest import run_cli

CASES = [
    ("scene", "Describe the image."),
    ("wide_jpeg", "How many circles are there?"),
    ("tall_small", "What colour is the square?"),
    ("gray", "Describe the image."),
    ("rgba", "Is there a <|im_start|> in the picture?"),
    ("16bit", "Describe the image in detail, please."),
    (None, "Write a haiku about shapes."),  # text only
]


@pytest.fixture(scope="module", params=["standard", "fused"])
def engine(request, tiny_engine, tiny_fused_engine):
    """The traced standard graph, and the onnxruntime flavour's fused graph, of the same weights."""
    return tiny_engine if request.param == "standard" else tiny_fused_engine


@pytest.fixture(scope="module")
def vl(engine):
    return FlashVL.load(engine)


@pytest.mark.parametrize("image,prompt", CASES)
def test_greedy_tokens_equal_reference(vl, engine, test_images, image, prompt):
    path = None if image is None else test_images[image]
    want = reference_run(engine, path, prompt, max_new_tokens=24, system=None)
    got = vl.generate(path, prompt, max_new_tokens=24)
    assert got.token_ids == want["token_ids"]
    assert got.text == want["text"]
    assert (got.prompt_tokens, got.image_tokens, got.finish_reason) == (
        want["prompt_tokens"], want["image_tokens"], want["finish_reason"])
    assert len(set(got.token_ids)) > 3, "degenerate output makes parity meaningless"


def test_cli_json_equals_reference_cli(tiny_engine, test_images):
    args = ["--engine", str(tiny_engine), "--image", str(test_images["scene"]), "--prompt", "What is here?",
            "--max-new-tokens", "16", "--json"]
    ours = run_cli("-m", "runtime.run", *args)
    ref = run_cli("-m", "export.reference", *args)
    assert ours.returncode == 0 and ref.returncode == 0, (ours.stderr, ref.stderr)
    a, b = json.loads(ours.stdout), json.loads(ref.stdout)
    assert a["token_ids"] == b["token_ids"] and a["text"] == b["text"]
    assert set(a) == set(b) >= {"text", "token_ids", "image_tokens", "timings"}
    assert set(a["timings"]) == set(b["timings"]) >= {"vision_ms", "prefill_ms", "ttft_ms", "decode_tokens_per_s"}
    assert a["image_tokens"] == 16 and len(a["token_ids"]) == 16


def test_onnx_graphs_match_pytorch_modules(vl, test_images):
    model = rebuild(vl.manifest)
    pixels = preprocess(load_image(test_images["scene"]), vl.manifest.preprocess)
    embeds = vl.vision.encode(pixels)
    with torch.no_grad():
        want = model.vision_graph(torch.from_numpy(pixels)).numpy()
    assert np.abs(embeds - want).max() <= 1e-4

    ids = vl.tokenizer.encode_prompt("Describe.", image_tokens=embeds.shape[1])
    logits = vl.decoder.forward(vl.embed.prompt(ids, embeds), 0).copy()
    dec = model.decoder
    with torch.no_grad():
        x = torch.from_numpy(splice_image(dec.embed_tokens.weight.numpy(), ids, embeds[0],
                                          vl.manifest.tokens.image_pad_id))[None]
        ref, *past = dec(x, torch.arange(len(ids))[None], *dec.empty_past())
    assert np.abs(logits - ref.numpy()).max() <= 1e-4
    pos = len(ids)
    for token in (5, 77, 301):
        logits = vl.decoder.forward(vl.embed.tokens(np.array([token])), pos).copy()
        with torch.no_grad():
            ref, *new = dec(dec.embed_tokens(torch.tensor([[token]])), torch.tensor([[pos]]), *past)
        past = [torch.cat((p, n)) for p, n in zip(past, new)]
        pos += 1
        assert np.abs(logits - ref.numpy()).max() <= 1e-4
    # the runtime's cache rows hold what PyTorch computed (the fused graph's cache is [B, Hkv, T, hd])
    cache = vl.decoder.cache[0, 0]
    rows = cache.transpose(2, 0, 1, 3)[:pos] if vl.decoder.shared else cache[:pos]  # [pos, B, Hkv, hd]
    np.testing.assert_allclose(rows, past[0].numpy(), atol=1e-4)


def test_streamed_pieces_join_to_the_text(vl, test_images):
    gen = vl.stream(test_images["scene"], "Describe the image.", max_new_tokens=20)
    pieces = list(gen)
    assert "".join(pieces) == gen.result.text
    assert gen.result.token_ids and len(gen.result.token_ids) <= 20


def test_sampling_is_seeded_and_differs_from_greedy(vl, test_images):
    from runtime.sampling import SamplingConfig

    cfg = SamplingConfig(temperature=1.2, top_p=0.95, top_k=100, repetition_penalty=1.1, seed=123)
    a = vl.generate(test_images["scene"], "Describe.", max_new_tokens=20, sampling=cfg)
    b = vl.generate(test_images["scene"], "Describe.", max_new_tokens=20, sampling=cfg)
    greedy = vl.generate(test_images["scene"], "Describe.", max_new_tokens=20)
    assert a.token_ids == b.token_ids
    assert a.token_ids != greedy.token_ids


def test_array_input_bgr_and_rgb_agree_with_file(vl, test_images):
    import cv2

    bgr = cv2.imread(str(test_images["scene"]))
    from_file = vl.generate(test_images["scene"], "Describe.", max_new_tokens=12).token_ids
    assert vl.generate(bgr, "Describe.", max_new_tokens=12).token_ids == from_file
    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    assert vl.generate(rgb, "Describe.", max_new_tokens=12, channels="rgb").token_ids == from_file
    data = test_images["scene"].read_bytes()
    assert vl.generate(data, "Describe.", max_new_tokens=12).token_ids == from_file


def test_generation_stops_at_the_context_window(vl, test_images):
    """A prompt that leaves 2 free cache rows yields at most 3 tokens (the last needs no row)."""
    target = vl.decoder.max_seq_len - 2
    prompt = ""
    while len(vl.tokenizer.encode_prompt(prompt, image_tokens=16)) < target:
        prompt += " a"
    n = len(vl.tokenizer.encode_prompt(prompt, image_tokens=16))
    assert n in (target, target + 1)
    r = vl.generate(test_images["scene"], prompt, max_new_tokens=50)
    assert r.prompt_tokens == n
    emitted = len(r.token_ids) + (r.finish_reason == "stop")
    assert emitted <= vl.decoder.max_seq_len - n + 1
    if r.finish_reason == "length":
        assert emitted == vl.decoder.max_seq_len - n + 1
