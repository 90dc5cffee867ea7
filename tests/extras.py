"""Which optional extra a test module needs, and a module-level skip that names it when it is missing.

    needs("export")   at the top of a module, before its imports of torch, transformers, onnx or export/
    needs("bench")    the same for onnxruntime-genai, gguf, llama-cpp-python and matplotlib

The base install (`pip install -e ".[test]"`) collects every module without an error; a module whose
extra is missing is skipped with the install command. tests/test_extras.py checks both, and that
MODULES covers every package setup.py lists for each extra.
"""

from __future__ import annotations

import importlib.util

import pytest

# extra -> the import name of each of its packages (setup.py lists them by their pip names)
MODULES: dict[str, dict[str, str]] = {
    "export": {"torch": "torch", "onnx": "onnx", "onnxscript": "onnxscript", "safetensors": "safetensors",
               "transformers": "transformers", "pillow": "PIL", "onnxruntime": "onnxruntime",
               "ml_dtypes": "ml_dtypes", "polygraphy": "polygraphy", "onnx-graphsurgeon": "onnx_graphsurgeon"},
    "bench": {"onnxruntime-genai": "onnxruntime_genai", "gguf": "gguf", "llama-cpp-python": "llama_cpp",
              "matplotlib": "matplotlib"},
}


def missing(extra: str) -> list[str]:
    """The pip names of `extra`'s packages that cannot be imported here."""
    return [pip for pip, module in MODULES[extra].items() if importlib.util.find_spec(module) is None]


def needs(extra: str, *, only: tuple[str, ...] = ()) -> None:
    """Skip the calling module (at its top) or test (in a fixture) unless `extra`, or just its packages
    named in `only`, is installed."""
    gone = [p for p in missing(extra) if not only or p in only]
    if gone:
        pytest.skip(f"needs the [{extra}] extra ({', '.join(gone)} not installed): "
                    f"pip install -e \".[{extra}]\"", allow_module_level=True)
