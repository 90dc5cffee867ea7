"""A base install collects every test module: a module whose optional extra is missing skips, naming it.

Each check runs pytest in a process where the extra's packages cannot be imported (their sys.modules
entries are None, which is how `import` and importlib.util.find_spec see a missing package): collection
without [bench]; collection and every fixture's setup without [export] (the engine fixtures skip too).
Tests that run an export CLI in a subprocess are marked @pytest.mark.extra("export"); .ci/run runs the
whole suite in a venv of the base install, which only a real install can check.
"""

from __future__ import annotations

import ast
import re

import pytest

from runtime.extras import MODULES, missing
from tests.conftest import ROOT, run_cli


def _pytest_without(extras: tuple[str, ...], how: str):
    blocked = sorted({m for e in extras for m in MODULES[e].values()} - {"onnxruntime"})  # onnxruntime is base
    script = ("import sys\n"
              f"for m in {blocked!r}: sys.modules[m] = None\n"
              "import pytest\n"
              f"sys.exit(pytest.main([{how!r}, '-q', '-rs', '-p', 'no:cacheprovider', 'tests']))\n")
    return run_cli("-c", script, timeout=180)


@pytest.mark.parametrize("extras, how", [(("bench",), "--collect-only"), (("export", "bench"), "--setup-only")],
                         ids=["no-bench", "no-export-no-bench"])
def test_without_an_extra_its_tests_skip_and_name_it(extras, how):
    proc = _pytest_without(extras, how)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert not re.search(r"\berrors?\b", out.splitlines()[-1]), out[-2000:]
    # a module that needs both skips on the first it checks: export (missing here too in a base install)
    named = "export" if "export" in extras or missing("export") else extras[0]
    assert f'needs the [{named}] extra' in out and f'pip install -e ".[{named}]"' in out, out[-2000:]
    assert re.search(r"^\d+ (tests collected|skipped)", out.splitlines()[-1]), out[-500:]


def _setup_py_extras() -> dict[str, list[str]]:
    """extras_require of setup.py, read from its source: {extra: [requirement, ...]}."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    lists = {t.id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
             for t in node.targets if isinstance(t, ast.Name) and isinstance(node.value, ast.List)}
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    extras = next(k.value for k in call.keywords if k.arg == "extras_require")
    return {ast.literal_eval(k): lists[v.id] for k, v in zip(extras.keys, extras.values)}


def test_the_table_covers_what_setup_py_lists():
    extras = _setup_py_extras()
    for extra, modules in MODULES.items():
        listed = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in extras[extra]}
        assert listed == {p.lower() for p in modules}, (extra, listed ^ {p.lower() for p in modules})
