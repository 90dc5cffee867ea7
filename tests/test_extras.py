"""The base install collects every test module: a module whose optional extra is missing skips, naming it.

Each check runs pytest's collection in a process where the extra's packages cannot be imported (their
sys.modules entries are None, which is how `import` and importlib.util.find_spec see a missing package).
"""

from __future__ import annotations

import importlib.metadata
import re

import pytest

from tests.conftest import run_cli
from tests.extras import MODULES


def _collect_without(*extras: str):
    blocked = sorted({m for e in extras for m in MODULES[e].values()} - {"onnxruntime"})  # onnxruntime is base
    script = ("import sys\n"
              f"for m in {blocked!r}: sys.modules[m] = None\n"
              "import pytest\n"
              "sys.exit(pytest.main(['--collect-only', '-q', '-rs', '-p', 'no:cacheprovider', 'tests']))\n")
    return run_cli("-c", script, timeout=180)


@pytest.mark.parametrize("extras", [("bench",), ("export", "bench")], ids=["no-bench", "no-export-no-bench"])
def test_collection_without_an_extra_skips_and_names_it(extras):
    proc = _collect_without(*extras)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert not re.search(r"\berrors?\b", out.splitlines()[-1]), out[-2000:]
    named = extras[0]  # a module that needs both skips on the first it checks: export
    assert f'needs the [{named}] extra' in out and f'pip install -e ".[{named}]"' in out, out[-2000:]
    assert re.search(r"^\d+ tests collected", out.splitlines()[-1]), out[-500:]


def test_the_table_covers_what_setup_py_lists():
    requires = importlib.metadata.requires("flash-vl-edge") or []
    for extra, modules in MODULES.items():
        listed = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in requires if f'extra == "{extra}"' in r}
        assert listed == {p.lower() for p in modules}, (extra, listed ^ {p.lower() for p in modules})
