"""`python -m runtime.bench.modes` on the tiny engines: the table and the JSON it writes."""

from __future__ import annotations

import json

from tests.conftest import run_cli


def test_bench_table_and_json(tiny_engine, tiny_dynamic_engine, test_images, tmp_path):
    out = tmp_path / "bench.json"
    proc = run_cli("-m", "runtime.bench.modes", "--engine", str(tiny_engine), "--engine", str(tiny_dynamic_engine),
                   "--image", str(test_images["scene"]), "--image", str(test_images["panorama"]),
                   "--new-tokens", "4", "--runs", "2", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    table = [l for l in proc.stdout.splitlines() if l.startswith("| Flash-VL")]
    assert len(table) == 2 + 4  # static: 1 mode x 2 images; dynamic: 2 modes x 2 images
    rows = json.loads(out.read_text())
    assert [r["mode"] for r in rows] == ["static"] * 2 + ["dynamic+ISS", "dynamic"] * 2
    dyn = {(r["image"], r["mode"]): r for r in rows if r["mode"] != "static"}
    assert dyn[("panorama.png", "dynamic+ISS")]["image_tokens"] < dyn[("panorama.png", "dynamic")]["image_tokens"]
    assert all(r["backend"] == "onnxruntime" for r in rows)  # no TensorRT plans in these folders
    assert all(r["vision_ms"] > 0 and r["prefill_ms"] > 0 and r["runs"] == 2 for r in rows)
    assert all(r["image_tokens"] == 16 for r in rows if r["mode"] == "static")


def test_bench_bad_engine_is_one_line(tmp_path):
    proc = run_cli("-m", "runtime.bench.modes", "--engine", str(tmp_path / "none"), "--image", "x.png")
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
