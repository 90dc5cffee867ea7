"""Shared fixtures: a tiny engine folder exported once per test session, and CLI runners."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.extras import needs

ROOT = Path(__file__).resolve().parent.parent
DEMO_CHECKPOINT = ROOT / "export" / "demo" / "checkpoint"
# Nothing here may reach a model hub: transformers builds every reference model from a config.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_runtest_setup(item):
    for mark in item.iter_markers("extra"):  # @pytest.mark.extra("export"): see tests/extras.py
        needs(*mark.args)


def run_cli(*args: str, env_extra: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python <args>` from the repo root, as a user would."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", **(env_extra or {}))
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """A user mistake: exit 2, one `error:` line on stderr naming what is wrong, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [l for l in proc.stderr.splitlines() if l.strip() and not l.startswith("[")]  # [..s] = export progress
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture(scope="session")
def tiny_engine(tmp_path_factory) -> Path:
    """engines/tiny as `python -m export --preset tiny --random-weights --seed 0` writes it."""
    needs("export")
    from export.build import WeightSource, export_engine
    from export.presets import get_preset

    out = tmp_path_factory.mktemp("engines") / "tiny"
    export_engine(get_preset("tiny"), WeightSource(seed=0), out)
    return out


@pytest.fixture(scope="session")
def demo_engine(tmp_path_factory) -> Path:
    """engines/demo as the README's command 1 writes it: the committed demo checkpoint, exported at fp32."""
    needs("export")
    from export.build import WeightSource, export_engine
    from export.presets import get_preset
    from export.weights import CheckpointArgs

    out = tmp_path_factory.mktemp("engines") / "demo"
    export_engine(get_preset("demo"), WeightSource(checkpoint=CheckpointArgs(checkpoint=DEMO_CHECKPOINT)), out)
    return out


@pytest.fixture(scope="session")
def tiny_dynamic_engine(tmp_path_factory) -> Path:
    """The tiny AIMv2 + ISS engine: `python -m export --preset tiny-dynamic --random-weights --seed 0`."""
    needs("export")
    from export.build import WeightSource, export_engine
    from export.presets import get_preset

    out = tmp_path_factory.mktemp("engines") / "tiny-dynamic"
    export_engine(get_preset("tiny-dynamic"), WeightSource(seed=0), out)
    return out


@pytest.fixture()
def engine_copy(tiny_engine, tmp_path) -> Path:
    """A private copy of the tiny engine that a test may damage."""
    dst = tmp_path / "engine"
    shutil.copytree(tiny_engine, dst)
    return dst


@pytest.fixture(scope="session")
def test_images(tmp_path_factory) -> dict[str, Path]:
    """Images of different sizes, aspect ratios and formats, written by OpenCV."""
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(7)
    out = {}
    scene = np.full((300, 400, 3), (200, 180, 40), np.uint8)
    cv2.circle(scene, (120, 150), 60, (0, 0, 255), -1)
    cv2.rectangle(scene, (230, 60), (360, 220), (255, 255, 255), -1)
    out["scene"] = d / "scene.png"
    cv2.imwrite(str(out["scene"]), scene)
    out["wide_jpeg"] = d / "wide.jpg"
    cv2.imwrite(str(out["wide_jpeg"]), cv2.resize(scene, (900, 120)))
    out["tall_small"] = d / "tall.png"
    cv2.imwrite(str(out["tall_small"]), rng.integers(0, 255, (90, 17, 3), dtype=np.uint8))
    out["gray"] = d / "gray.png"
    cv2.imwrite(str(out["gray"]), cv2.cvtColor(scene, cv2.COLOR_BGR2GRAY))
    rgba = np.dstack([scene, np.linspace(0, 255, 400, dtype=np.uint8)[None, :].repeat(300, 0)])
    out["rgba"] = d / "rgba.png"
    cv2.imwrite(str(out["rgba"]), rgba)
    out["16bit"] = d / "deep.png"
    cv2.imwrite(str(out["16bit"]), scene.astype(np.uint16) * 257)
    out["panorama"] = d / "panorama.png"
    cv2.imwrite(str(out["panorama"]), cv2.resize(scene, (1200, 150)))
    out["portrait"] = d / "portrait.jpg"
    cv2.imwrite(str(out["portrait"]), cv2.resize(scene, (120, 400)))
    out["needle"] = d / "needle.png"
    cv2.imwrite(str(out["needle"]), rng.integers(0, 255, (300, 1, 3), dtype=np.uint8))
    out["dot"] = d / "dot.png"
    cv2.imwrite(str(out["dot"]), np.array([[[10, 200, 30]]], np.uint8))
    return out


@pytest.fixture(scope="session")
def tiny_fused_engine(tmp_path_factory) -> Path:
    """The tiny weights of `tiny_engine` as the onnxruntime flavour: the fused decoder (export.fused_decoder)."""
    needs("export")
    from export.build import WeightSource, export_engine
    from export.precision import plan_from_args
    from export.presets import get_preset

    out = tmp_path_factory.mktemp("engines") / "tiny-fused"
    export_engine(get_preset("tiny"), WeightSource(seed=0), out, plan_from_args(None, None, None, flavour="onnxruntime"))
    return out


# Every reduced precision, exported once per session from the same seeded weights as `tiny_engine`
# (tests/test_precision.py measures them; tests/test_trt_backend.py runs them through TensorRT's stand-in).
PRECISION_PLANS = {
    "fp16": dict(precision="fp16"),
    "int8": dict(precision="int8"),
    "int4": dict(precision="int4"),
    "int4-ort": dict(precision="int4", flavour="onnxruntime", lm_head=True),
    "int4-fp16": dict(precision="int4", compute="fp16"),  # W4A16, the Jetson form
}


@pytest.fixture(scope="session")
def precision_engines(tmp_path_factory) -> dict[str, Path]:
    needs("export")
    from calib.calibrate import DEFAULT_IMAGES, CalibConfig
    from export.build import WeightSource, export_engine
    from export.precision import plan_from_args
    from export.presets import get_preset

    root = tmp_path_factory.mktemp("precision")
    out = {}
    for name, kw in PRECISION_PLANS.items():
        out[name] = root / name
        rest = {k: v for k, v in kw.items() if k != "precision"}
        plan = plan_from_args(kw["precision"], None, None, calib=CalibConfig(DEFAULT_IMAGES, 12, "percentile"), **rest)
        export_engine(get_preset("tiny"), WeightSource(seed=0), out[name], plan)
    return out
