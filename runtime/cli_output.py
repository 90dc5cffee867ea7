"""Writing the answer to stdout, and saying so when stdout is what fails.

A stdout that cannot take the output (`> /dev/full`, a full disk, `| true` whose reader exited) is
the user's redirection, not the engine folder: the error names stdout and the fix.  After a failure
fd 1 points at /dev/null, so Python's own flush at exit cannot fail a second time with a traceback.
"""

from __future__ import annotations

import errno
import os
import re
import sys

from runtime.errors import FlashVLError


def stdout_failure(e: OSError, what: str = "the answer") -> BaseException:
    """What to raise for a failed write to stdout: the reader having gone stays a BrokenPipeError (a stream
    ends there, as `| head` means); anything else is a FlashVLError naming stdout."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if e.errno == errno.EPIPE:
        return e
    return FlashVLError(f"stdout: cannot write {what} ({e.strerror or e}); redirect it to a file on a disk with "
                        f"free space")


def write_stdout(text: str) -> None:
    """Write and flush `text`; a stdout that fails raises FlashVLError naming it (a closed pipe included)."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except OSError as e:
        failure = stdout_failure(e)
        if isinstance(failure, OSError):
            raise FlashVLError(f"stdout: cannot write the answer ({e.strerror or e}); the program reading the pipe "
                               f"exited before the answer was written") from None
        raise failure from None


# C0/C1 controls (ESC starts terminal sequences), and the bidi overrides that reorder what a terminal shows
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def error_line(e: BaseException) -> str:
    """`error: ...` for the user, one line whatever a path or a manifest string held: control characters
    (a newline, ESC[2J) and bidi overrides are shown escaped, never sent to the terminal."""
    return "error: " + _UNPRINTABLE.sub(lambda m: m[0].encode("unicode_escape").decode(), str(e))

