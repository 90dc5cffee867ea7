"""The README and docs/ as a reader uses them: every example runs as written, and every link leads somewhere.

    python blocks   every one in README.md and docs/*.md runs as a script
    sh blocks       every one in README.md runs with bash (commands 1 and 2 are .ci/run's, verbatim)
    marked          a block under <!-- needs: a USB camera --> is skipped, saying what it needs

Each runs in a folder laid out like the repository root after command 1 (engines/demo, samples/), with
this test run's Python first on PATH, and must exit 0 with no traceback.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.extras import needs
from tests.snippets import code_blocks, readme_command

needs("export")  # the demo engine is exported from its checkpoint

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
BLOCKS = [b for path in (README, *DOCS) for b in code_blocks(path)
          if b.lang == "python" or (b.lang == "sh" and b.path == README and not b.mark.startswith("command"))]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, demo_engine) -> Path:
    d = tmp_path_factory.mktemp("reader")
    (d / "engines").mkdir()
    (d / "engines" / "demo").symlink_to(demo_engine, target_is_directory=True)
    (d / "samples").symlink_to(ROOT / "samples", target_is_directory=True)
    return d


@pytest.mark.parametrize("block", BLOCKS, ids=[f"{b.where} {b.lang}" for b in BLOCKS])
def test_example_runs_as_written(block, workdir):
    if block.needs:
        pytest.skip(f"{block.where} needs {block.needs}")
    env = dict(os.environ, PYTHONPATH=str(ROOT), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    argv = [sys.executable, "-c", block.text] if block.lang == "python" else ["bash", "-euo", "pipefail", "-c", block.text]
    proc = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, (block.where, proc.stdout[-2000:], proc.stderr[-2000:])
    assert proc.stdout.strip(), (block.where, "printed nothing")


def test_readme_has_both_commands_and_stays_a_front_door():
    assert readme_command(1).startswith("python3 -m venv .venv && . .venv/bin/activate && pip install -e ")
    assert readme_command(2).endswith("python -m pytest -q")
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= 220, f"README.md is {lines} lines: the reference belongs in docs/"


def test_every_relative_link_leads_to_a_file():
    broken = []
    for path in (README, *DOCS):
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            if not (path.parent / target.split("#")[0]).exists():
                broken.append(f"{path.relative_to(ROOT)} -> {target}")
    assert not broken, broken
