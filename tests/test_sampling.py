"""Tests of runtime/sampling.py.

Parity: each pure step equals its transformers logits processor on random logits.
Properties (hypothesis): greedy, top-k, top-p, the kept set, seeding, softmax.
Statistics: seeded empirical frequencies match the softmax.
Errors: every bad config value and bad input names its flag or fix in one line.
"""

import math
import subprocess
import sys

import numpy as np
import pytest

from tests.extras import needs

needs("export")

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from runtime.errors import FlashVLError
from runtime.sampling import (
    NUCLEUS_PROBE,
    Sampler,
    SamplingConfig,
    apply_repetition_penalty,
    apply_temperature,
    softmax,
    top_k_filter,
    top_p_filter,
)

VOCAB = 151936
NO_HISTORY = np.zeros(0, dtype=np.int64)


def hf(processor, logits: np.ndarray, history: np.ndarray = NO_HISTORY) -> np.ndarray:
    """Run one transformers processor on logits [vocab] with history [n] -> [vocab]."""
    ids = torch.from_numpy(history.astype(np.int64))[None]  # [1, n]
    return processor(ids, torch.from_numpy(logits.copy())[None])[0].numpy()  # [vocab]


def assert_same_filter(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(ref))
    kept = ~np.isneginf(ref)
    np.testing.assert_allclose(ours[kept], ref[kept], rtol=1e-6, atol=1e-6)


def random_logits(seed: int, n: int, scale: float = 3.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)  # [n]


def pipeline_kept(logits: np.ndarray, history: np.ndarray, cfg: SamplingConfig) -> np.ndarray:
    """The ids a non-greedy config may draw, by composing the pure steps over the whole vocab."""
    x = logits.astype(np.float32)
    if cfg.repetition_penalty != 1:
        x = apply_repetition_penalty(x, history, cfg.repetition_penalty)
    x = top_k_filter(apply_temperature(x, cfg.temperature), cfg.top_k)
    if cfg.top_p < 1:
        x = top_p_filter(x, cfg.top_p)
    return np.flatnonzero(~np.isneginf(x))


# ---------------------------------------------------------------------------
# Parity with transformers
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("penalty", [0.7, 1.3, 2.0])
@pytest.mark.parametrize("n", [1000, VOCAB])
def test_repetition_penalty_matches_transformers(seed, penalty, n):
    logits = random_logits(seed, n)
    logits[:4] = 0.0
    logits[4] = -np.inf
    rng = np.random.default_rng(seed + 100)
    # Repeats, the zero and -inf logits, and ids past the vocab (which transformers ignores).
    history = np.concatenate([rng.integers(0, n + 50, 400), [0, 1, 4, 4, n + 3]])
    assert_same_filter(apply_repetition_penalty(logits, history, penalty),
                       hf(RepetitionPenaltyLogitsProcessor(penalty), logits, history))


@pytest.mark.parametrize("temperature", [0.3, 0.8, 1.7])
def test_temperature_matches_transformers(temperature):
    logits = random_logits(3, VOCAB)
    assert_same_filter(apply_temperature(logits, temperature), hf(TemperatureLogitsWarper(temperature), logits))


@pytest.mark.parametrize("k", [1, 5, 50, 1000, VOCAB, VOCAB + 5])
@pytest.mark.parametrize("tied", [False, True])
def test_top_k_matches_transformers(k, tied):
    logits = random_logits(4, VOCAB)
    if tied:  # integer logits: the k-th largest value is shared by many ids
        logits = np.round(logits)
    assert_same_filter(top_k_filter(logits, k), hf(TopKLogitsWarper(k), logits))


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9, 0.99])
@pytest.mark.parametrize(("n", "scale", "nucleus"), [
    (1000, 1.0, "sorted"),  # small vocab: one plain sort
    (VOCAB, 8.0, "probe"),  # peaked: the nucleus lies among the NUCLEUS_PROBE largest
    (VOCAB, 1.0, "whole"),  # flat: the nucleus is bigger, the whole vocab gets sorted
])
def test_top_p_matches_transformers(p, n, scale, nucleus):
    logits = random_logits(5, n, scale)
    ours = top_p_filter(logits, p)
    assert_same_filter(ours, hf(TopPLogitsWarper(p), logits))
    kept = int(np.isfinite(ours).sum())
    if nucleus == "probe":
        assert kept < NUCLEUS_PROBE
    if nucleus == "whole" and p >= 0.5:
        assert kept >= NUCLEUS_PROBE


def test_pipeline_matches_transformers_and_sampler_draws_from_it():
    logits = random_logits(6, VOCAB, scale=4.0)
    history = np.random.default_rng(6).integers(0, VOCAB, 300)
    cfg = SamplingConfig(temperature=0.8, top_k=50, top_p=0.9, repetition_penalty=1.1, seed=6)
    ref = logits
    for processor in (RepetitionPenaltyLogitsProcessor(1.1), TemperatureLogitsWarper(0.8),
                      TopKLogitsWarper(50), TopPLogitsWarper(0.9)):
        ref = hf(processor, ref, history)
    kept = pipeline_kept(logits, history, cfg)
    np.testing.assert_array_equal(kept, np.flatnonzero(np.isfinite(ref)))
    sampler = Sampler(cfg)
    assert {sampler.sample(logits[None], history) for _ in range(50)} <= set(kept.tolist())


# ---------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------

finite_logits = hnp.arrays(
    np.float32, st.integers(1, 48),
    elements=st.one_of(st.floats(-30, 30, width=32), st.sampled_from([0.0, 1.0, -2.5])))


@st.composite
def logits_with_masks(draw):
    """Finite logits [n] with some -inf entries, at least one finite."""
    x = draw(finite_logits)
    masked = draw(hnp.arrays(np.bool_, x.shape))
    masked[draw(st.integers(0, x.shape[0] - 1))] = False
    return np.where(masked, np.float32(-np.inf), x)


histories = hnp.arrays(np.int64, st.integers(0, 20), elements=st.integers(0, 60))

configs = st.builds(
    SamplingConfig,
    temperature=st.floats(0.05, 3.0),
    top_k=st.integers(0, 60),
    top_p=st.one_of(st.just(1.0), st.floats(0.01, 1.0)),
    repetition_penalty=st.one_of(st.just(1.0), st.floats(0.5, 2.0)),
    seed=st.integers(0, 2**32),
)


@settings(max_examples=80, deadline=None)
@given(logits=logits_with_masks())
def test_greedy_is_argmax_lowest_id_on_ties(logits):
    token = Sampler(SamplingConfig()).sample(logits, NO_HISTORY)
    assert token == int(np.argmax(logits))
    assert token == int(np.flatnonzero(logits == logits.max())[0])


@settings(max_examples=50, deadline=None)
@given(logits=finite_logits, history=histories, penalty=st.floats(0.5, 2.0))
def test_greedy_with_penalty_is_argmax_of_penalized(logits, history, penalty):
    cfg = SamplingConfig(repetition_penalty=penalty)
    penalized = apply_repetition_penalty(logits, history, penalty)
    assert Sampler(cfg).sample(logits[None], history) == int(np.argmax(penalized))


@settings(max_examples=80, deadline=None)
@given(logits=logits_with_masks(), k=st.integers(0, 60))
def test_top_k_keeps_the_k_largest(logits, k):
    out = top_k_filter(logits, k)
    kept = out > -np.inf
    n_finite = int(np.isfinite(logits).sum())
    assert kept.sum() >= (n_finite if k == 0 else min(k, n_finite))
    np.testing.assert_array_equal(out[kept], logits[kept])
    if (~kept).any():
        assert out[kept].min() >= logits[~kept].max()


@settings(max_examples=80, deadline=None)
@given(logits=logits_with_masks(), p=st.floats(0.01, 1.0))
def test_top_p_keeps_a_minimal_nucleus(logits, p):
    out = top_p_filter(logits, p)
    kept = out > -np.inf
    probs = np.exp(logits.astype(np.float64) - logits.max())  # [n] reference in fp64
    probs /= probs.sum()
    cut = out[kept].min()
    np.testing.assert_array_equal(out[kept], logits[kept])
    assert kept[np.argmax(logits)]
    assert probs[kept].sum() >= p - 1e-5  # reaches p
    assert probs[logits > cut].sum() < p + 1e-5  # minimal: without the cut's tie group it would not
    assert not (logits[~kept] >= cut).any()  # a prefix of the descending order


@settings(max_examples=60, deadline=None)
@given(logits=logits_with_masks(), history=histories, cfg=configs)
def test_samples_come_from_the_kept_set(logits, history, cfg):
    kept = set(pipeline_kept(logits, history, cfg).tolist())
    sampler = Sampler(cfg)
    for _ in range(10):
        assert sampler.sample(logits, history) in kept


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**63), top_k=st.sampled_from([0, 50, 500]), top_p=st.sampled_from([1.0, 0.95]))
def test_seed_reproduces_tokens_and_other_seeds_differ(seed, top_k, top_p):
    rng = np.random.default_rng(0)
    # Near-uniform over 1000 ids, so 100 draws from two seeds agree with probability ~0.
    steps = [rng.standard_normal(1000).astype(np.float32) * np.float32(0.1) for _ in range(100)]

    def run(seed):
        sampler = Sampler(SamplingConfig(temperature=1.0, top_k=top_k, top_p=top_p, seed=seed))
        return [sampler.sample(x, NO_HISTORY) for x in steps]

    first = run(seed)
    assert run(seed) == first
    assert run(seed + 1) != first


@settings(max_examples=80, deadline=None)
@given(logits=logits_with_masks())
def test_softmax_sums_to_one_and_masks_neg_inf(logits):
    probs = softmax(logits)
    assert probs.dtype == np.float32 and probs.shape == logits.shape
    assert abs(float(probs.sum(dtype=np.float64)) - 1.0) < 1e-5
    assert (probs >= 0).all()
    assert (probs[np.isneginf(logits)] == 0).all()
    assert probs[np.argmax(logits)] > 0


def test_softmax_rejects_no_finite_logit():
    for bad in ([-np.inf, -np.inf], [0.0, np.nan], [0.0, np.inf]):
        with pytest.raises(FlashVLError, match="softmax needs at least one finite logit"):
            softmax(np.array(bad, dtype=np.float32))


# ---------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [
    SamplingConfig(temperature=1.0, seed=1234),
    SamplingConfig(temperature=0.7, top_k=4, seed=99),
    SamplingConfig(temperature=1.3, top_p=0.8, seed=7),
])
def test_frequencies_match_softmax(cfg):
    logits = np.array([2.0, 1.0, 0.5, 0.0, -1.0, -3.0], dtype=np.float32)
    draws = 20_000
    kept = np.zeros(logits.shape, dtype=bool)
    kept[pipeline_kept(logits, NO_HISTORY, cfg)] = True
    expected = np.where(kept, np.exp((logits - logits.max()) / cfg.temperature), 0.0)
    expected /= expected.sum()
    sampler = Sampler(cfg)
    counts = np.bincount([sampler.sample(logits, NO_HISTORY) for _ in range(draws)], minlength=logits.shape[0])
    # The largest standard error is sqrt(0.25 / 20000) = 0.0035; seeded, so not flaky.
    np.testing.assert_allclose(counts / draws, expected, atol=0.012)
    assert (counts[~kept] == 0).all()


# ---------------------------------------------------------------------------
# Inputs: shapes, dtypes, immutability
# ---------------------------------------------------------------------------

def test_sample_accepts_row_and_any_float_dtype():
    logits = random_logits(8, 2000)
    cfg = SamplingConfig(temperature=0.9, top_k=20, top_p=0.95, repetition_penalty=1.2, seed=5)
    history = np.arange(0, 2000, 7)
    ref = Sampler(cfg).sample(logits, history)
    for variant in (logits[None], logits.astype(np.float64), logits.astype(np.float64)[None]):
        assert Sampler(cfg).sample(variant, history) == ref
    assert isinstance(Sampler(SamplingConfig()).sample(logits.astype(np.float16), history), int)


def test_nothing_mutates_its_input():
    logits = random_logits(9, VOCAB)
    history = np.arange(0, 5000, 3)
    before, history_before = logits.copy(), history.copy()
    outs = [apply_repetition_penalty(logits, history, 1.3), apply_temperature(logits, 0.7),
            top_k_filter(logits, 40), top_k_filter(logits, 0), top_p_filter(logits, 0.9), softmax(logits)]
    for cfg in (SamplingConfig(repetition_penalty=1.3),
                SamplingConfig(temperature=0.7, top_k=40, top_p=0.9, repetition_penalty=1.3, seed=1),
                SamplingConfig(temperature=0.7, top_p=0.5, seed=1)):
        Sampler(cfg).sample(logits, history)
    np.testing.assert_array_equal(logits, before)
    np.testing.assert_array_equal(history, history_before)
    assert not any(np.shares_memory(out, logits) for out in outs)


def test_runtime_module_does_not_import_torch():
    code = "import sys, runtime.sampling; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

@pytest.mark.parametrize(("field", "value", "flag"), [
    ("temperature", -0.1, "--temperature"),
    ("temperature", math.nan, "--temperature"),
    ("temperature", math.inf, "--temperature"),
    ("temperature", "0.7", "--temperature"),
    ("top_k", -1, "--top-k"),
    ("top_k", 2.5, "--top-k"),
    ("top_k", True, "--top-k"),
    ("top_p", 0.0, "--top-p"),
    ("top_p", 1.5, "--top-p"),
    ("top_p", math.nan, "--top-p"),
    ("repetition_penalty", 0.0, "--repetition-penalty"),
    ("repetition_penalty", -1.2, "--repetition-penalty"),
    ("repetition_penalty", math.inf, "--repetition-penalty"),
    ("seed", -1, "--seed"),
    ("seed", 1.5, "--seed"),
])
def test_bad_config_value_names_its_flag(field, value, flag):
    with pytest.raises(FlashVLError) as info:
        SamplingConfig(**{field: value})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{field} must be ") and f"got {value!r}; pass {flag}" in message


def test_top_p_message_reads_as_documented():
    with pytest.raises(FlashVLError) as info:
        SamplingConfig(top_p=1.5)
    assert str(info.value).startswith("top_p must be in (0, 1], got 1.5; pass --top-p between 0 and 1")


def test_good_configs_pass():
    assert SamplingConfig().greedy
    assert not SamplingConfig(temperature=np.float32(0.7), top_k=np.int64(5), top_p=1, seed=0).greedy
    with pytest.raises(Exception):
        SamplingConfig().temperature = 1.0  # frozen


@pytest.mark.parametrize(("logits", "history", "match"), [
    (np.zeros((2, 10), np.float32), NO_HISTORY, r"must be \[vocab\] or \[1, vocab\], got shape \(2, 10\)"),
    (np.zeros((1, 1, 10), np.float32), NO_HISTORY, r"must be \[vocab\] or \[1, vocab\]"),
    (np.zeros(0, np.float32), NO_HISTORY, r"must be \[vocab\] or \[1, vocab\], got shape \(0,\)"),
    (np.zeros(10, np.int64), NO_HISTORY, "logits must be floating point, got dtype int64"),
    (np.array([0.0, np.nan], np.float32), NO_HISTORY, "got a maximum of nan"),
    (np.array([0.0, np.inf], np.float32), NO_HISTORY, "got a maximum of inf"),
    (np.full(4, -np.inf, np.float32), NO_HISTORY, "at least one finite value"),
    (np.zeros(10, np.float32), np.array([1.0, 2.0]), "history ids must be integers, got dtype float64"),
    (np.zeros(10, np.float32), np.array([3, -1]), "history ids must be >= 0, got -1"),
])
def test_bad_sample_inputs_raise(logits, history, match):
    sampler = Sampler(SamplingConfig(temperature=0.5, repetition_penalty=1.1, seed=0))
    with pytest.raises(FlashVLError, match=match) as info:
        sampler.sample(logits, history)
    assert "\n" not in str(info.value)


def test_pure_steps_validate_their_parameter():
    logits = np.zeros(4, np.float32)
    with pytest.raises(FlashVLError, match="temperature 0 means greedy"):
        apply_temperature(logits, 0.0)
    with pytest.raises(FlashVLError, match="--top-k"):
        top_k_filter(logits, -2)
    with pytest.raises(FlashVLError, match="--top-p"):
        top_p_filter(logits, 0.0)
    with pytest.raises(FlashVLError, match="--repetition-penalty"):
        apply_repetition_penalty(logits, NO_HISTORY, 0.0)
