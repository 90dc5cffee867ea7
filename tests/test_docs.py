"""The README and docs/ as a reader uses them: every example runs as written, and every link leads somewhere.

    python blocks   every one in README.md and docs/*.md runs as a script
    sh blocks       every one in README.md runs with bash (commands 1 and 2 are .ci/run's, verbatim)
    marked          a block under <!-- needs: a USB camera --> is skipped, saying what it needs
    links           every relative link and #anchor leads to a file and a heading
    refusal         the README's quoted refusal of the published checkpoints is what the exporter says

Each runs in a folder laid out like the repository root after command 1 (engines/demo, samples/), with
this test run's Python first on PATH, and must exit 0 with no traceback.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DEMO_CHECKPOINT, ROOT, assert_one_line_error, run_cli
from tests.extras import needs
from tests.snippets import code_blocks, readme_command

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
BLOCKS = [b for path in (README, *DOCS) for b in code_blocks(path)
          if b.lang == "python" or (b.lang == "sh" and b.path == README and not b.mark.startswith("command"))]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, demo_engine) -> Path:  # demo_engine skips without the [export] extra
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


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    prose = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)  # a `# comment` is no heading
    return {_slug(m) for m in re.findall(r"^#+\s+(.*)$", prose, flags=re.M)}


def test_every_relative_link_leads_to_a_file_and_heading():
    broken = []
    for path in (README, *DOCS):
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = path if not file else path.parent / file
            if not dest.exists():
                broken.append(f"{path.relative_to(ROOT)} -> {target}")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{path.relative_to(ROOT)} -> {target} (no such heading)")
    assert not broken, broken


def test_readme_quotes_the_exporters_refusal(tmp_path):
    """The README shows what the exporter says to a checkpoint whose tokenizer has no image tokens (as
    Qwen2-1.5B-Instruct's has none): the demo checkpoint with them taken out must get that line."""
    needs("export")
    quoted = [b.text.strip() for b in code_blocks(README) if b.text.startswith("error: tokenizer")]
    assert len(quoted) == 1, quoted
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(DEMO_CHECKPOINT, checkpoint)
    tok = json.loads((checkpoint / "tokenizer.json").read_text())
    image_tokens = {"<|vision_start|>", "<|image_pad|>", "<|vision_end|>"}
    assert image_tokens <= {t["content"] for t in tok["added_tokens"]}
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["content"] not in image_tokens]
    for t in image_tokens:
        tok["model"]["vocab"].pop(t, None)
    (checkpoint / "tokenizer.json").write_text(json.dumps(tok))
    proc = run_cli("-m", "export", "--preset", "demo", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out"))
    line = assert_one_line_error(proc, "no complete set of image placeholder tokens")
    pattern = ".*?".join(re.escape(part) for part in quoted[0].split("…"))
    assert re.fullmatch(pattern, line), (quoted[0], line)
