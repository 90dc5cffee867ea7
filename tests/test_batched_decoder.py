"""The decoder graphs carry sequences of different lengths in one call (tiny preset, fp32).

Three sequences with prompts of 5, 9 and 3 rows go through one OrtDecoder: one prefilled while another
decodes, one prefilled in two chunks, staggered arrivals, a slot idle mid-way; every logit row must be
the one the sequence gets alone (a fresh decoder each): bit-equal on the fused graph (GroupQueryAttention
reads each slot's own rows), within float rounding on the traced one (its softmax runs over the longest
past, masked), with the same greedy ids on both.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.extras import needs

needs("export")

from runtime.manifest import load_manifest
from runtime.ort_backend import OrtDecoder

LENS = (5, 9, 3)
STEPS = 6


@pytest.fixture(scope="module", params=["standard", "fused"])
def engine(request, tiny_engine, tiny_fused_engine):
    return tiny_engine if request.param == "standard" else tiny_fused_engine


def decoder(engine: Path, **kw) -> OrtDecoder:
    m = load_manifest(engine)
    return OrtDecoder(engine / m.graphs.decoder.file, m.graphs.decoder, m.decoder, 1, **kw)


def inputs(dim: int):
    rng = np.random.default_rng(0)
    prompts = [rng.standard_normal((1, n, dim)).astype(np.float32) for n in LENS]  # [1, P, D] each
    steps = [rng.standard_normal((STEPS, 1, 1, dim)).astype(np.float32) for _ in LENS]  # [steps, 1, 1, D] each
    return prompts, steps


def alone(engine: Path, prompts, steps) -> list[list[np.ndarray]]:
    out = []
    for k, n in enumerate(LENS):
        dec = decoder(engine)
        rows = [dec.forward(prompts[k], 0).copy()]
        rows += [dec.forward(steps[k][s], n + s).copy() for s in range(STEPS)]
        out.append(rows)
    return out


def test_ragged_batch_equals_each_sequence_alone(engine):
    dim = load_manifest(engine).decoder.dim
    prompts, steps = inputs(dim)
    want = alone(engine, prompts, steps)
    dec = decoder(engine)
    assert dec.max_batch == 8
    got: list[list] = [[], [], []]
    pos, done = [0, 0, 0], [0, 0, 0]

    def step(active):
        n = max(active) + 1
        x = np.zeros((n, 1, dim), np.float32)
        for k in active:
            x[k] = steps[k][done[k]][0]
        logits = dec.decode(x, np.array(pos[:n]))  # idle slots at their filled length
        for k in active:
            got[k].append(logits[k:k + 1].copy())
            pos[k] += 1
            done[k] += 1

    got[0].append(dec.prefill(0, prompts[0], 0).copy())
    pos[0] = LENS[0]
    step([0])
    dec.prefill(1, prompts[1][:, :4], 0)  # slot 1: a chunk, then slot 0 decodes past it
    pos[1] = 4
    step([0])  # slot 1 is mid-prefill, outside the decode's slots
    got[1].append(dec.prefill(1, prompts[1][:, 4:], 4).copy())  # the rest of slot 1's prompt
    pos[1] = LENS[1]
    step([0, 1])
    got[2].append(dec.prefill(2, prompts[2], 0).copy())
    pos[2] = LENS[2]
    while any(d < STEPS for d in done):
        step([k for k in range(3) if done[k] < STEPS])  # slot 0 finishes first and idles among the others
    flavour = load_manifest(engine).graphs.decoder.flavour
    for k in range(3):
        assert len(got[k]) == len(want[k]) == STEPS + 1
        for a, b in zip(got[k], want[k]):
            assert int(a.argmax()) == int(b.argmax())
            if flavour == "onnxruntime":
                np.testing.assert_array_equal(a, b)
            else:
                np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)


def test_the_cache_grows_in_rows_and_slots(engine):
    dec = decoder(engine)
    dim = dec.dec.dim
    before = dec.cache.shape
    dec.prefill(5, np.zeros((1, 3, dim), np.float32), 0)
    assert dec.cache.nbytes > np.prod(before) * dec.cache.itemsize  # slot 5 exists now
    with pytest.raises(Exception, match="past the 256-position KV cache"):
        dec.decode(np.zeros((1, 1, dim), np.float32), np.array([256]))


def test_max_batch_lowered_at_load_and_capped_by_the_graph(engine):
    assert decoder(engine, max_batch=2).max_batch == 2
    assert decoder(engine, max_batch=64).max_batch == 8  # the graph records 8 (export --max-batch)


def test_folders_before_schema_5_load_at_batch_1(engine, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(engine, old)
    raw = json.loads((old / "manifest.json").read_text())
    raw["schema_version"] = 4
    for g in raw["graphs"].values():
        if g is not None:
            g.pop("max_batch")
    (old / "manifest.json").write_text(json.dumps(raw))
    assert load_manifest(old).graphs.decoder.max_batch == 1
    assert decoder(old).max_batch == 1
    raw["graphs"]["decoder"]["max_batch"] = 8  # a schema 4 file claiming batches is refused
    (old / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(Exception, match="schema 4 decoders carry one sequence a call"):
        load_manifest(old)
