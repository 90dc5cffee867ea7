"""Which optional extra a test needs, and a skip that names it when it is missing.

    needs("export")   at the top of a module, before its imports of torch, transformers, onnx or export/,
                      or at the start of a fixture that exports an engine
    needs("bench")    the same for onnxruntime-genai, gguf, llama-cpp-python and matplotlib
    @pytest.mark.extra("export")   a test that runs an export CLI in a subprocess (tests/conftest.py)

The base install (`pip install -e ".[test]"`) runs the suite without an error: what needs a missing extra
is skipped with the install command. The table is runtime.extras.MODULES; tests/test_extras.py checks it.
"""

from __future__ import annotations

import pytest

from runtime.extras import install_hint, missing


def needs(extra: str, *, only: tuple[str, ...] = ()) -> None:
    """Skip the calling module (at its top) or test (in a fixture) unless `extra`, or just its packages
    named in `only`, is installed."""
    gone = [p for p in missing(extra) if not only or p in only]
    if gone:
        pytest.skip(install_hint(extra, gone), allow_module_level=True)
