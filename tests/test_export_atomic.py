"""Export and calibration replace an engine folder whole or not at all (export.atomic).

    killed        `python -m export` SIGKILLed at several steps over a working folder: the folder stays
                  byte-identical and gives the same tokens; the next export removes what the kill left
    failed        a missing checkpoint, or one that does not fit the preset: one error line, nothing changed
    refused       a non-empty folder without manifest.json, the current folder, a file: left untouched
    umask         every file and the folder get the umask's permissions: 0644/0755 under 022 (the export
                  after the kills), 0664/0775 under 002
    calibration   `calibrate` stopped half-way leaves the folder as it was
    fallback      the swap where renameat2 is unavailable
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.extras import needs

needs("export")

from calib.calibrate import CalibConfig, calibrate
from export import atomic
from runtime.api import FlashVL
from runtime.manifest import MANIFEST_FILE, load_manifest
from tests.conftest import DEMO_CHECKPOINT, ROOT, assert_one_line_error

EXPORT = ["-m", "export", "--preset", "tiny", "--random-weights", "--seed", "1", "--out"]  # seed 1: not the fixture's 0

# The exporter with a pause once the new folder is complete, just before it is swapped in.
PAUSED_BEFORE_SWAP = """
import sys, time
import export.atomic as atomic
from export import progress
swap = atomic._swap
def paused(new, out):
    progress.say("test: complete, paused before the swap")
    time.sleep(120)
    return swap(new, out)
atomic._swap = paused
from export.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def run(*args: str, cwd: Path = ROOT, umask: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    preexec = None if umask is None else (lambda: os.umask(umask))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                          preexec_fn=preexec)


def kill_at(needle: str, argv: list[str], sig: int = signal.SIGKILL) -> int:
    """Run `python argv`, send it `sig` as soon as a stderr line holds `needle`; its pid."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    guard = threading.Timer(120, proc.kill)
    guard.start()
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if needle in line:
                proc.send_signal(sig)
                break
        if sig != signal.SIGKILL:
            lines += proc.stderr.readlines()  # what it says on its way out
            proc.wait(timeout=60)
    finally:
        guard.cancel()
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -sig and any(needle in line for line in lines), "".join(lines)
    if sig != signal.SIGKILL:
        assert f"stopped by {signal.Signals(sig).name}: " in lines[-1] and "as it was" in lines[-1], "".join(lines)
    return proc.pid


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file's bytes, but the hash stamps a load may rewrite."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.name != ".verified.json"}


def tokens(folder: Path) -> list[int]:
    return FlashVL.load(folder).generate(None, "hi", max_new_tokens=4).token_ids


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


def assert_modes(folder: Path, file_mode: int, dir_mode: int) -> None:
    modes = {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in folder.iterdir()}
    assert modes == dict.fromkeys(modes, oct(file_mode))  # onnx writes its .data files 0600
    assert oct(stat.S_IMODE(folder.stat().st_mode)) == oct(dir_mode)  # mkdtemp makes 0700


def test_killed_export_leaves_the_old_engine(engine_copy):
    (engine_copy / "vision.plan").write_bytes(b"a TensorRT plan of the old graphs")
    before, ids = snapshot(engine_copy), tokens(engine_copy)
    for needle, argv in (("exporting vision.onnx", EXPORT), ("exporting decoder.onnx", EXPORT),
                         ("paused before the swap", ["-c", PAUSED_BEFORE_SWAP, *EXPORT[2:]])):
        pid = kill_at(needle, [*argv, str(engine_copy)])
        assert snapshot(engine_copy) == before, needle
        assert tokens(engine_copy) == ids, needle
        left = leftovers(engine_copy)  # this kill's temporary folder; the one before it was removed by this run
        assert len(left) == 1 and left[0].startswith(f".{engine_copy.name}.export-{pid}-"), (needle, left)

    p = run(*EXPORT, str(engine_copy), umask=0o022)
    assert p.returncode == 0, p.stderr
    assert leftovers(engine_copy) == []
    m = load_manifest(engine_copy)
    assert m.source.seed == 1
    assert set(snapshot(engine_copy)) == {f.path for f in m.files} | {MANIFEST_FILE}  # vision.plan went too
    assert_modes(engine_copy, 0o644, 0o755)
    assert len(tokens(engine_copy)) == 4


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_stopped_export_cleans_up_and_leaves_the_old_engine(engine_copy, sig):
    """systemd, docker, a closed terminal: unlike SIGKILL the exporter removes its half-built folder itself."""
    before = snapshot(engine_copy)
    kill_at("exporting decoder.onnx", [*EXPORT, str(engine_copy)], sig)
    assert snapshot(engine_copy) == before and leftovers(engine_copy) == []


@pytest.mark.parametrize("weights, needle", [
    (["--checkpoint", "{tmp}/nowhere"], "not found"),
    (["--checkpoint", str(DEMO_CHECKPOINT)], "does not match preset 'tiny'"),
], ids=["missing", "other-preset"])
def test_failed_export_leaves_the_old_engine(engine_copy, tmp_path, weights, needle):
    weights = [w.format(tmp=tmp_path) for w in weights]
    before, ids = snapshot(engine_copy), tokens(engine_copy)
    assert_one_line_error(run("-m", "export", "--preset", "tiny", *weights, "--out", str(engine_copy)), needle)
    assert snapshot(engine_copy) == before
    assert tokens(engine_copy) == ids
    assert leftovers(engine_copy) == []
    fresh = tmp_path / "new" / "engine"
    assert_one_line_error(run("-m", "export", "--preset", "tiny", *weights, "--out", str(fresh)), needle)
    assert not (tmp_path / "new").exists()  # neither the folder nor the parent made for it


def test_refuses_what_is_not_an_engine_folder(engine_copy, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("mine")
    assert_one_line_error(run(*EXPORT, str(data)), str(data), "not an engine folder", "choose a new or empty folder")
    assert snapshot(data) == {"notes.txt": b"mine"} and leftovers(data) == []

    before = snapshot(engine_copy)  # an engine folder, but the one we stand in (as `--out .` or a folder above)
    assert_one_line_error(run(*EXPORT, ".", cwd=engine_copy), "current folder")
    assert snapshot(engine_copy) == before and leftovers(engine_copy) == []

    (tmp_path / "file").write_text("x")
    assert_one_line_error(run(*EXPORT, str(tmp_path / "file")), "is a file, not a folder")
    assert (tmp_path / "file").read_text() == "x"


def test_files_and_folder_follow_the_umask(tmp_path):
    out = tmp_path / "fresh"  # renamed into place; the swap over a folder is checked after the kills above
    p = run(*EXPORT, str(out), umask=0o002)
    assert p.returncode == 0, p.stderr
    assert_modes(out, 0o664, 0o775)


def test_stopped_calibration_leaves_the_folder(engine_copy, monkeypatch):
    calibrate(engine_copy, CalibConfig(max_images=3, method="minmax"))
    before, ids = snapshot(engine_copy), tokens(engine_copy)

    def stop(ranges):
        raise KeyboardInterrupt

    # Called once vision.int8.onnx and calibration.json are written: rewritten in place, they would no
    # longer match the manifest.
    monkeypatch.setattr("calib.calibrate.trt_cache_text", stop)
    with pytest.raises(KeyboardInterrupt):
        calibrate(engine_copy, CalibConfig(max_images=4, method="percentile"))
    assert snapshot(engine_copy) == before
    assert tokens(engine_copy) == ids
    assert leftovers(engine_copy) == []


def test_swap_without_renameat2(tmp_path, monkeypatch):
    out, new = tmp_path / "engine", tmp_path / ".engine.export-1-x"
    for folder, text in ((out, "old"), (new, "new")):
        folder.mkdir()
        (folder / MANIFEST_FILE).write_text(text)
    monkeypatch.setattr(atomic, "_renameat2", lambda: None)
    old = atomic._swap(new, out)
    assert (out / MANIFEST_FILE).read_text() == "new" and (old / MANIFEST_FILE).read_text() == "old"

    # Killed between its two renames: `out` is missing and the old engine is only in `.old-`: kept.
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    aside = old.rename(tmp_path / f".engine.old-{dead.pid}-00000000")
    out.rename(tmp_path / f".engine.export-{dead.pid}-x")
    atomic.remove_stale(out)
    assert leftovers(out) == [aside.name]


def test_an_input_inside_out_is_refused_before_it_could_be_swapped_away(tmp_path, tiny_engine):
    """--checkpoint engines/x/ckpt --out engines/x would delete the checkpoint with the old folder."""
    import shutil
    out = tmp_path / "x"
    shutil.copytree(tiny_engine, out)
    shutil.copytree(DEMO_CHECKPOINT, out / "ckpt")
    proc = run("-m", "export", "--preset", "demo", "--checkpoint", str(out / "ckpt"), "--out", str(out))
    assert_one_line_error(proc, f"--checkpoint {out / 'ckpt'} lies inside --out {out}", "move it out")
    assert (out / "ckpt" / "model.safetensors").read_bytes() == (DEMO_CHECKPOINT / "model.safetensors").read_bytes()


def test_a_folder_with_foreign_files_is_never_replaced(tmp_path, tiny_engine):
    """A manifest.json alone does not make an engine folder (a web app's has one); nor may an engine folder's
    other files (someone's notes) go with it."""
    import shutil
    app = tmp_path / "app"
    app.mkdir()
    (app / "manifest.json").write_text('{"name": "my pwa"}')
    (app / "thesis.txt").write_text("precious")
    assert_one_line_error(run(*EXPORT, str(app)), "a manifest.json that is not an engine manifest")
    assert (app / "thesis.txt").read_text() == "precious"
    eng = tmp_path / "eng"
    shutil.copytree(tiny_engine, eng)
    (eng / "notes.txt").write_text("mine")
    (eng / "vision.plan").write_bytes(b"a plan")  # ours: may go
    assert_one_line_error(run(*EXPORT, str(eng)), "holds notes.txt, which no export", "move them out")
    assert (eng / "notes.txt").read_text() == "mine"
    (eng / "notes.txt").unlink()
    assert run(*EXPORT, str(eng)).returncode == 0 and not (eng / "vision.plan").exists()
