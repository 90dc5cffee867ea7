"""Checks of the arguments apps pass to the Python API: a wrong type or range is a FlashVLError naming it.

Without them `max_new_tokens=2.5` or `"5"`, `sampling={...}` or a prompt holding a lone surrogate
end deep inside NumPy, tokenizers or ONNX Runtime as a TypeError or AttributeError that names
none of the caller's arguments.  Each check raises one line: the argument, what it must be, what
it got.
"""

from __future__ import annotations

import math
import numbers
import os

from runtime.errors import FlashVLError
from runtime.sampling import SamplingConfig


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_int(name: str, value, lo: int, hi: int | None = None, hint: str = "") -> int:
    """An integer (not a bool, not a float such as 2.0) in lo..hi."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or value < lo or (hi is not None and value > hi):
        span = f"at least {lo}" if hi is None else f"in {lo}..{hi}"
        raise FlashVLError(f"{name} must be an integer {span}, got {_shown(value)}"
                           f"{' (' + type(value).__name__ + ')' if not ok else ''}{'; ' + hint if hint else ''}")
    return int(value)


def check_number(name: str, value) -> float:
    """A finite real number (not a bool, not a string); ranges are the caller's."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        raise FlashVLError(f"{name} must be a finite number, got {_shown(value)} ({type(value).__name__})")
    return float(value)


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise FlashVLError(f"{name} must be True or False, got {_shown(value)} ({type(value).__name__})")
    return value


def check_text(name: str, value, optional: bool = False) -> str | None:
    """A str that is valid Unicode text (UTF-8 encodable: no lone surrogates, which is what bytes that are not
    UTF-8 become in sys.argv and os.environ)."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise FlashVLError(f"{name} must be a string{' or None' if optional else ''}, got "
                           f"{type(value).__name__} {_shown(value)}"
                           + ("; decode bytes first, e.g. data.decode('utf-8')" if isinstance(value, bytes) else ""))
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = value[e.start]
        raw = os.fsencode(bad) if 0xDC80 <= ord(bad) <= 0xDCFF else None  # a byte the shell passed undecoded
        what = f"the byte {raw!r}, which is not UTF-8" if raw else f"a lone surrogate {bad!r}"
        raise FlashVLError(f"{name} is not valid text: character {e.start} is {what}; pass UTF-8 text "
                           f"(check the terminal's or the file's encoding, e.g. iconv -f latin1 -t utf-8)") from None
    return value


def check_choice(name: str, value, choices: tuple) -> str:
    if not isinstance(value, str) or value not in choices:
        raise FlashVLError(f"{name} must be one of {list(choices)}, got {_shown(value)}")
    return value


def check_request(prompt, max_new_tokens, sampling, system, iss) -> None:
    """One request's settings, as FlashVL.stream() and a stream's PromptConfig take them."""
    check_text("prompt", prompt)
    check_int("max_new_tokens", max_new_tokens, 1)
    if sampling is not None and not isinstance(sampling, SamplingConfig):
        raise FlashVLError(f"sampling must be a runtime.SamplingConfig or None, got {type(sampling).__name__}; "
                           f"e.g. SamplingConfig(temperature=0.7, top_p=0.9, seed=1)")
    check_text("system", system, optional=True)
    check_bool("iss", iss)


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's cpuset), at least 1."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_threads(value, name: str = "threads") -> int | None:
    """ONNX Runtime intra-op threads: None (all CPUs) or 1..the CPUs this process may use; more only
    oversubscribes the cores (and each thread costs a stack and a scratch arena)."""
    if value is None:
        return None
    n = cpu_count()
    return check_int(name, value, 1, n, f"this machine gives the process {n} CPU{'s' if n > 1 else ''} "
                                             f"(default: all of them)")


def check_utf8_path(flag: str, path, reader: str) -> None:
    """A path that `reader` (OpenCV's video I/O, ONNX Runtime, tokenizers) takes only as UTF-8: one holding bytes
    that are not UTF-8 (a str with surrogate escapes, as sys.argv and os.fsdecode give them) would crash
    VideoCapture and VideoWriter with a segfault, or fail inside the others with words about the file."""
    text = os.fsdecode(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise FlashVLError(f"{flag} {shown}: character {e.start} of the path is a byte that is not UTF-8, which "
                           f"{reader} cannot open; rename it") from None


def check_opencv_path(flag: str, path) -> None:
    check_utf8_path(flag, path, "OpenCV's video I/O")
