"""Next-token sampling: the decoder's last logits [vocab] -> one token id.

The steps and their order are those of Hugging Face `generate` with `do_sample`:

    logits [vocab] --repetition penalty--> --greedy?--> argmax (lowest id on ties)
                                           --temperature--> --top-k--> --top-p--> softmax --> one draw

Each step is a pure NumPy function over 1-D fp32 logits that returns a new array
and never mutates its input.  They match transformers' processors
(`RepetitionPenaltyLogitsProcessor`, `TemperatureLogitsWarper`, `TopKLogitsWarper`,
`TopPLogitsWarper` with min_tokens_to_keep=1); tests/test_sampling.py checks that.
`Sampler.sample` runs them for one decode step.  With top-k it keeps only the
candidates (np.partition, O(vocab)) before it sorts for top-p, so top-k + top-p never
sorts the vocabulary.  Top-p alone first looks for the nucleus among the
NUCLEUS_PROBE largest logits (enough for a peaked LLM distribution) and sorts the
whole vocabulary only when the nucleus is bigger.

Ties: top-k keeps every logit >= the k-th largest (as TopKLogitsWarper does).  Top-p
keeps every logit >= the smallest kept one, so a group of equal logits at the cut is
kept whole; TopPLogitsWarper would keep an arbitrary part of it (torch.sort is not
stable).  Rounding: torch's softmax normalizes with a sum a few ulps off NumPy's, so
when a cumulative probability lies within ~1e-7 of 1 - p the cut can differ by one
token (2 of 900 random cases at vocab 151936, all with flat distributions).

Per-call time of `Sampler.sample` on a [1, 151936] fp32 vector of N(0, 1) logits
(numpy 2.4, the 2-core dev VM under load from other jobs, median of 300 calls).  A
random vector is the worst case for top-p: its nucleus at temperature 0.8, p 0.9 is ~78k ids.

    | config                                        | ms/call |
    |-----------------------------------------------|---------|
    | greedy (temperature 0)                        |   0.02  |
    | greedy, repetition_penalty 1.1 (2000 ids)     |   0.06  |
    | temperature 0.8                               |   1.7   |
    | temperature 0.8, top_p 0.9                    |   8.7   |
    | same, logits x4 (peaked: a 33-id nucleus)     |   1.3   |
    | temperature 0.8, top_k 50                     |   1.05  |
    | temperature 0.8, top_k 50, top_p 0.9          |   1.1   |
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from runtime.errors import FlashVLError

NEG_INF = np.float32(-np.inf)


# ---------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------

def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


TEMPERATURE_RANGE = (1e-3, 1e3)  # logits / T in float32: past these it overflows, or every token ties


def _check_temperature(value) -> None:
    lo, hi = TEMPERATURE_RANGE
    if not _is_number(value) or not math.isfinite(value) or value < 0 or (value != 0 and not lo <= value <= hi):
        raise FlashVLError(
            f"temperature must be 0 (greedy) or between {lo:g} and {hi:g}, got {value!r}; "
            f"pass --temperature 0 for greedy decoding or a positive value such as 0.7")


def _check_top_k(value) -> None:
    if not _is_int(value) or value < 0:
        raise FlashVLError(
            f"top_k must be an integer >= 0, got {value!r}; "
            f"pass --top-k 0 to turn top-k off or a positive count such as 50")


def _check_top_p(value) -> None:
    if not _is_number(value) or not 0 < value <= 1:
        raise FlashVLError(
            f"top_p must be in (0, 1], got {value!r}; pass --top-p between 0 and 1 (1 turns top-p off)")


def _check_repetition_penalty(value) -> None:
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise FlashVLError(
            f"repetition_penalty must be a finite number > 0, got {value!r}; "
            f"pass --repetition-penalty 1 to turn it off or a value such as 1.1")


def _check_seed(value) -> None:
    if value is not None and (not _is_int(value) or value < 0):
        raise FlashVLError(
            f"seed must be an integer >= 0, got {value!r}; "
            f"pass --seed with a non-negative integer, or leave it out for a random seed")


@dataclass(frozen=True)
class SamplingConfig:
    """The user's sampling choices, built at the CLI edge (--temperature, --top-k, ...).

    temperature 0 means greedy: top_k and top_p are then ignored.  top_k 0, top_p 1 and
    repetition_penalty 1 turn their step off.  A seed makes the drawn tokens reproducible.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        _check_temperature(self.temperature)
        _check_top_k(self.top_k)
        _check_top_p(self.top_p)
        _check_repetition_penalty(self.repetition_penalty)
        _check_seed(self.seed)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


# ---------------------------------------------------------------------------
# Pure steps over logits [vocab] fp32
# ---------------------------------------------------------------------------

def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities over the last axis in fp32; -inf logits get probability 0."""
    logits = np.asarray(logits, dtype=np.float32)
    top = np.max(logits, axis=-1, keepdims=True)  # [..., 1]
    if not np.all(np.isfinite(top)):
        bad = top[~np.isfinite(top)][0]
        raise FlashVLError(
            f"softmax needs at least one finite logit and no NaN or +inf, got a maximum of {bad}; "
            f"check the decoder's output and the filters applied before sampling")
    e = logits - top  # [..., vocab] a new array, so exp and the division can work in place
    np.exp(e, out=e)
    e /= np.sum(e, axis=-1, keepdims=True)
    return e


def apply_repetition_penalty(logits: np.ndarray, history_ids: np.ndarray, penalty: float) -> np.ndarray:
    """Penalize every id seen in `history_ids` (prompt + generated), once per distinct id.

    A logit < 0 is multiplied by `penalty`, any other is divided by it (CTRL, as in
    transformers).  Ids >= vocab are ignored, as transformers does: the model cannot emit them.
    """
    _check_repetition_penalty(penalty)
    history_ids = np.asarray(history_ids)
    if history_ids.size and not np.issubdtype(history_ids.dtype, np.integer):
        raise FlashVLError(
            f"history ids must be integers, got dtype {history_ids.dtype}; pass the token ids as an int array")
    ids = history_ids.reshape(-1).astype(np.int64, copy=False)  # [n]
    if ids.size and ids.min() < 0:
        raise FlashVLError(
            f"history ids must be >= 0, got {int(ids.min())}; pass the prompt and generated token ids unchanged")
    ids = ids[ids < logits.shape[-1]]  # [n'] drop ids the lm_head cannot emit
    out = logits.copy()
    seen = logits[ids]  # [n'] duplicates read and write the same value, so no np.unique
    out[ids] = np.where(seen < 0, seen * np.float32(penalty), seen / np.float32(penalty))
    return out


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Divide by temperature (> 0; temperature 0 is greedy and never reaches here)."""
    _check_temperature(temperature)
    if temperature == 0:
        raise FlashVLError(
            "apply_temperature needs temperature > 0, got 0; temperature 0 means greedy: take np.argmax instead")
    return logits / np.float32(temperature)


def _kth_largest(logits: np.ndarray, k: int) -> np.float32:
    """The k-th largest value, 1 <= k <= vocab, by introselect (O(vocab), no sort)."""
    vocab = logits.shape[-1]
    return np.partition(logits, vocab - k)[vocab - k]


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep every logit >= the k-th largest (ties at the cut all kept), others -inf; k 0 is off."""
    _check_top_k(k)
    if k == 0 or k >= logits.shape[-1]:
        return logits.copy()
    return np.where(logits >= _kth_largest(logits, k), logits, NEG_INF)


def _cumsum_f64(values: np.ndarray) -> np.ndarray:
    """Cumulative sum accumulated in fp64; in place on the fp64 copy, which is ~3x faster
    at vocab size than np.cumsum(values, dtype=np.float64) with numpy 2.4."""
    out = values.astype(np.float64)  # [n] f64
    return np.cumsum(out, out=out)


# Top-p first tries the nucleus among this many largest logits, which avoids sorting the
# vocabulary when the distribution is peaked (the usual case for an LLM).
NUCLEUS_PROBE = 1024


def _nucleus_cut(logits: np.ndarray, p: float) -> np.float32:
    """The smallest logit top-p keeps, by TopPLogitsWarper's rule.

    Sorted ascending, a token goes when the cumulative probability up to and including it
    is <= 1 - p; the largest always stays.  The cumulative probability only grows along
    the sort, so when the smallest of the NUCLEUS_PROBE largest logits goes, every logit
    below it goes too and only those candidates need sorting; otherwise sort the rest.
    """
    n = logits.shape[-1]
    threshold = np.float32(1.0 - p)
    if n <= 4 * NUCLEUS_PROBE:
        ascending = np.sort(logits)  # [n]
    else:
        ascending = np.partition(logits, n - NUCLEUS_PROBE)  # [n] the largest NUCLEUS_PROBE last
        top = ascending[n - NUCLEUS_PROBE:]  # [probe] a view
        top.sort()
        probs = softmax(ascending)  # [n]
        below = np.sum(probs[:n - NUCLEUS_PROBE], dtype=np.float64)  # mass under the candidates
        cumulative = (below + _cumsum_f64(probs[n - NUCLEUS_PROBE:])).astype(np.float32)  # [probe]
        first_kept = int(np.searchsorted(cumulative, threshold, side="right"))
        if first_kept > 0:
            return top[min(first_kept, NUCLEUS_PROBE - 1)]
        ascending[:n - NUCLEUS_PROBE].sort()  # now all of it is ascending
    # torch's CPU cumsum accumulates fp32 in fp64; doing the same puts the cut where HF puts it.
    cumulative = _cumsum_f64(softmax(ascending)).astype(np.float32)  # [n]
    first_kept = int(np.searchsorted(cumulative, threshold, side="right"))
    return ascending[min(first_kept, n - 1)]


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Nucleus filter: keep the fewest top logits whose probability reaches p, others -inf."""
    _check_top_p(p)
    return np.where(logits >= _nucleus_cut(logits, p), logits, NEG_INF)


def _draw(probs: np.ndarray, u: float) -> int:
    """Inverse-CDF draw of one index from probs [n] with a uniform u in [0, 1)."""
    cdf = _cumsum_f64(probs)  # [n]
    index = int(np.searchsorted(cdf, u * cdf[-1], side="right"))
    if index == cdf.shape[0]:  # u * total rounded up to total: take the last index with mass
        index = int(np.flatnonzero(probs)[-1])
    return index


# ---------------------------------------------------------------------------
# Sampler
# ---------------------------------------------------------------------------

class Sampler:
    """Draws one token per decode step from a config; make one per generate call.

    Holds a PCG64 generator seeded from `config.seed` (fresh OS entropy when None), so a
    seed reproduces the same tokens for the same logits.
    """

    def __init__(self, config: SamplingConfig):
        self.config = config
        self._rng = np.random.Generator(np.random.PCG64(config.seed))

    def sample(self, logits: np.ndarray, history: np.ndarray) -> int:
        """logits [vocab] or [1, vocab] (any float dtype), history [n] int ids -> token id."""
        cfg = self.config
        logits = np.asarray(logits)
        if logits.ndim not in (1, 2) or (logits.ndim == 2 and logits.shape[0] != 1) or logits.shape[-1] == 0:
            raise FlashVLError(
                f"logits must be [vocab] or [1, vocab], got shape {logits.shape}; "
                f"pass the last position's logits of one sequence")
        if not np.issubdtype(logits.dtype, np.floating):
            raise FlashVLError(f"logits must be floating point, got dtype {logits.dtype}; pass the decoder's logits")
        logits = logits.reshape(-1).astype(np.float32, copy=False)  # [vocab] f32, the one cast
        top = logits.max()
        if not np.isfinite(top):
            raise FlashVLError(
                f"logits must be finite or -inf with at least one finite value, got a maximum of {top}; "
                f"the decoder produced NaN/inf or masked every id: check the engine's precision or re-export it")

        if cfg.repetition_penalty != 1:
            logits = apply_repetition_penalty(logits, history, cfg.repetition_penalty)  # [vocab]
        if cfg.greedy:
            return int(np.argmax(logits))  # first maximum = lowest id on ties
        logits = apply_temperature(logits, cfg.temperature)  # [vocab]

        # Candidates: ids of the logits still in play, or None for the whole vocabulary.
        ids = None
        if 0 < cfg.top_k < logits.shape[0]:
            ids = np.flatnonzero(logits >= _kth_largest(logits, cfg.top_k))  # [k'] k' >= k with ties
            logits = logits[ids]  # [k']
        if cfg.top_p < 1:
            kept = np.flatnonzero(logits >= _nucleus_cut(logits, cfg.top_p))  # [m]
            ids = kept if ids is None else ids[kept]  # [m]
            logits = logits[kept]  # [m]

        index = _draw(softmax(logits), self._rng.random())
        return index if ids is None else int(ids[index])
