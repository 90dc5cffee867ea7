"""The optional extras of setup.py, by the import name of each package, and a CLI's check for its extra.

    MODULES[extra]                  {pip name: import name} (tests/test_extras.py checks it against setup.py)
    missing(extra)                  the pip names of `extra`'s packages that cannot be imported here
    exit_unless_installed(extra, prog)   at a CLI's start: one `error:` line and exit 2 instead of an
                                    ImportError traceback when the command's extra is not installed
"""

from __future__ import annotations

import importlib.util
import sys

MODULES: dict[str, dict[str, str]] = {
    "export": {"torch": "torch", "onnx": "onnx", "onnxscript": "onnxscript", "safetensors": "safetensors",
               "transformers": "transformers", "pillow": "PIL", "onnxruntime": "onnxruntime",
               "ml_dtypes": "ml_dtypes", "polygraphy": "polygraphy", "onnx-graphsurgeon": "onnx_graphsurgeon"},
    "bench": {"onnxruntime-genai": "onnxruntime_genai", "gguf": "gguf", "llama-cpp-python": "llama_cpp",
              "matplotlib": "matplotlib"},
}


def missing(extra: str) -> list[str]:
    return [pip for pip, module in MODULES[extra].items() if importlib.util.find_spec(module) is None]


def install_hint(extra: str, gone: list[str]) -> str:
    return f"needs the [{extra}] extra ({', '.join(gone)} not installed): pip install -e \".[{extra}]\""


def exit_unless_installed(extra: str, prog: str) -> None:
    gone = missing(extra)
    if gone:
        print(f"error: {prog} {install_hint(extra, gone)}", file=sys.stderr)
        sys.exit(2)
