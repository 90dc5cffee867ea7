"""The runtime runs the whole pipeline with PyTorch (and export/, transformers) unimportable."""

from __future__ import annotations

import ast
import json

from tests.conftest import ROOT, run_cli

BLOCKER = """
import importlib.abc, sys
BLOCKED = ("torch", "transformers", "export", "torchvision", "safetensors")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked import of {name} in the runtime test")
sys.meta_path.insert(0, Block())
"""


def test_cli_and_api_run_with_torch_blocked(tiny_engine, test_images):
    script = BLOCKER + f"""
import json, sys
from runtime.run import main
rc = main(["--engine", {str(tiny_engine)!r}, "--image", {str(test_images['scene'])!r}, "--max-new-tokens", "8",
           "--json"])
from runtime import FlashVL
r = FlashVL.load({str(tiny_engine)!r}).generate({str(test_images['rgba'])!r}, "Describe.", max_new_tokens=8)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "export"))
print(json.dumps({{"rc": rc, "api_tokens": len(r.token_ids), "loaded": loaded}}))
"""
    proc = run_cli("-c", script)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    cli, summary = json.loads(lines[0]), json.loads(lines[-1])
    assert summary == {"rc": 0, "api_tokens": 8, "loaded": []}
    assert len(cli["token_ids"]) == 8 and cli["image_tokens"] == 16


def test_runtime_sources_never_import_torch_or_export():
    bad = []
    for path in sorted((ROOT / "runtime").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("torch", "export", "transformers")]
    assert bad == []


def test_tensorrt_tools_run_without_torch(tiny_engine):
    """`python -m export.trt` (build and check) is for the Jetson, where PyTorch is not installed."""
    for sub in ([], ["check"]):
        script = BLOCKER + f"""
import sys
from export.trt.__main__ import main
rc = main({sub!r} + ["--engine", {str(tiny_engine)!r}])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
print(rc, loaded)
"""
        proc = run_cli("-c", script.replace('"export", ', ""))
        assert proc.stdout.strip() == "2 []", (proc.stdout, proc.stderr)  # stops at a clear error, torch-free
        assert "no TensorRT plans" in proc.stderr or "tensorrt" in proc.stderr, proc.stderr
