"""User-facing errors of the runtime.

`FlashVLError` is raised for anything a user can fix (a wrong path, a bad image,
a manifest from another exporter version).  Its message is one line that says
what is wrong, where, what was expected, what was found and how to fix it.  The
CLI prints it without a traceback and exits non-zero; library callers catch it.
"""


class FlashVLError(Exception):
    """A problem with the user's input or engine folder, with a one-line message."""


class EngineError(FlashVLError):
    """The engine folder is missing, incomplete, corrupt or of another version."""


class ImageError(FlashVLError):
    """An image could not be read or converted."""


class PromptError(FlashVLError):
    """The prompt does not fit the model (e.g. longer than the context window)."""


class Cancelled(Exception):
    """A graph call was stopped from another thread (`cancel()`); not a user mistake, never shown as one."""


class QueueFull(FlashVLError):
    """More requests wait than the engine's queue holds (FlashVL.load(max_queue=...)); retry later."""
