"""Replace an engine folder whole or not at all: build the new one beside it, check it, swap it in.

    with building(out) as work:      # an empty folder beside `out`
        ...write the engine into work, manifest.json last...
        link_rest(out, work)         # calib: hard links of the files it leaves as they are

`work` is `.{name}.export-<pid>-<random>` in out's parent (one filesystem, so renames are atomic).
When the body returns, the new folder must load (`load_manifest` + `verify_files`); its folder and
the files written into it get the umask's permissions (mkdtemp makes 0700, onnx writes `.data` 0600);
then it takes out's place:
- on Linux, one renameat2(RENAME_EXCHANGE), then the old copy, now at work's name, is deleted;
- where renameat2 is missing or refused (other OS, old glibc, some filesystems), out is renamed to
  `.{name}.old-<pid>-<random>`, work to out, and the old copy deleted. A kill between those two
  renames leaves no `out`, and the old engine in the `.old-` folder: rename it back;
- when out does not exist, or is an empty folder, one rename.
On any failure (KeyboardInterrupt too) work is removed, and any parent folder made for out; out is
untouched. A kill leaves work behind: the next build for the same out removes the `.export-`
folders whose process is gone (and `.old-` ones once out exists again).

Refused before any work: out is a file; out is or holds the current folder; out is a non-empty
folder without manifest.json (not an engine folder: replacing it would delete someone's files).
An engine folder is replaced whole: TensorRT plans, calibration files and anything else in it go.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import secrets
import shutil
import stat
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from export import progress
from runtime.engine_check import check_graph_records
from runtime.errors import EngineError
from runtime.files import process_alive, verify_files
from runtime.manifest import MANIFEST_FILE, load_manifest
from runtime.stop_signals import deferred_stops

AT_FDCWD = -100
RENAME_EXCHANGE = 2


def check_target(out: Path) -> None:
    """Raise EngineError unless `out` may be replaced: missing, an empty folder, or an engine folder."""
    if out.exists() and not out.is_dir():
        raise EngineError(f"{out}: is a file, not a folder; give a new or empty folder, or an engine folder "
                          f"to replace")
    real, here = out.resolve(), Path.cwd().resolve()
    if real == here or real in here.parents:
        raise EngineError(f"{out}: is the current folder or holds it, which is never replaced whole; give a new "
                          f"or empty folder (e.g. engines/NAME), or run from outside it")
    if real.is_dir() and not (real / MANIFEST_FILE).is_file() and any(real.iterdir()):
        raise EngineError(f"{out}: not empty and holds no {MANIFEST_FILE}, so it is not an engine folder, and "
                          f"an export replaces its folder whole; choose a new or empty folder, or remove it")
    if real.is_dir() and (real / MANIFEST_FILE).is_file():
        foreign = _foreign_entries(real)
        if foreign:
            raise EngineError(f"{out}: holds {', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}, which no "
                              f"export, calibration or TensorRT build wrote, and an export replaces the folder "
                              f"whole; move them out, or choose another --out")


# What an engine folder holds besides the files its manifest lists (runtime.manifest's layout)
_ARTEFACTS = {MANIFEST_FILE, ".verified.json", "vision.plan", "decoder.plan", "timing.cache", "calibration.json",
              "calibration.cache", "vision.int8.onnx", "vision.int8.onnx.data"}
_TEMPORARY = re.compile(r".*\.tmp")  # manifest.json.tmp, .verified.json.<pid>.tmp, a plan being written


def _foreign_entries(folder: Path) -> list[str]:
    """Entries of an engine folder that none of our tools wrote (someone's files, or a folder that only has a
    manifest.json of another kind): an export must not delete them."""
    try:
        raw = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
        listed = {f["path"] for f in raw["files"]} if isinstance(raw, dict) and "schema_version" in raw else None
    except (OSError, ValueError, KeyError, TypeError):
        listed = None
    if listed is None:
        return [f"a {MANIFEST_FILE} that is not an engine manifest"]
    return sorted(p.name for p in folder.iterdir()
                  if p.name not in listed and p.name not in _ARTEFACTS and not _TEMPORARY.fullmatch(p.name))


def check_inputs_outside(out: Path, inputs: dict[str, Path]) -> None:
    """Refuse an input (a checkpoint, calibration images) inside `out`: the swap would delete it."""
    real = Path(out).resolve()
    for flag, path in inputs.items():
        p = Path(path).resolve()
        if p == real or real in p.parents:
            raise EngineError(f"{flag} {path} lies inside --out {out}, which the export replaces whole (deleting "
                              f"it); move it out of {out}, or export to another folder")


@contextmanager
def building(out: Path, inputs: dict[str, Path] | None = None):
    """Yield a temporary folder beside `out`; on a clean exit, check it and swap it in for `out`.
    `inputs` ({flag: path}) are what the build reads: refused if they lie inside `out`."""
    out = Path(out)
    check_inputs_outside(out, inputs or {})  # first: an input inside `out` is also a file no export wrote there
    check_target(out)
    real = out.resolve()  # a symlink to an engine folder keeps pointing at the new one
    made = [p for p in (real.parent, *real.parent.parents) if not p.exists()]  # deepest first
    real.parent.mkdir(parents=True, exist_ok=True)
    work, swapped = None, False
    try:
        remove_stale(real)
        work = Path(tempfile.mkdtemp(prefix=f".{real.name}.export-{os.getpid()}-", dir=real.parent))
        yield work
        with progress.step("checking the new folder"):
            manifest = load_manifest(work)
            verify_files(work, manifest.files)
            check_graph_records(work, manifest)
        set_modes(work)
        if real.is_dir():  # the folder keeps the permissions it was given (e.g. 0750 for a service group)
            os.chmod(work, stat.S_IMODE(real.stat().st_mode))
        if real.exists() and any(real.iterdir()):
            progress.say(f"replacing {out}")
        with deferred_stops():  # once swapped, a stop must not report the folder as unchanged
            old, swapped = _swap(work, real), True
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)  # if killed here, the next build removes it
    finally:
        if not swapped:
            if work is not None:
                shutil.rmtree(work, ignore_errors=True)
            for p in made:
                try:
                    p.rmdir()
                except OSError:
                    break


def link_rest(src: Path, dst: Path) -> None:
    """Hard-link (or, where links fail, copy) into `dst` each entry of `src` that `dst` does not have.

    Only after the writing is done: onnx refuses to load external data that has several hard links."""
    for p in src.iterdir():
        if (dst / p.name).exists() or (dst / p.name).is_symlink():
            continue
        if p.is_symlink():
            os.symlink(os.readlink(p), dst / p.name)
        elif p.is_dir():
            shutil.copytree(p, dst / p.name, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(p, dst / p.name)


def remove_stale(out: Path) -> None:
    """Delete the temporary folders beside `out` that a killed build left (their process is gone)."""
    left = re.compile(rf"\.{re.escape(out.name)}\.(export|old)-(\d+)-[a-z0-9_]+")
    for p in out.parent.iterdir():
        m = left.fullmatch(p.name)
        if m is None or process_alive(int(m[2])):
            continue
        if m[1] == "old" and not out.exists():  # killed mid-fallback: the only copy of the old engine
            continue
        shutil.rmtree(p, ignore_errors=True)


def umask() -> int:
    """The process umask, read without changing it where Linux allows (Umask: in /proc, 4.7+)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)  # briefly strict rather than open, should another thread create a file now
    os.umask(mask)
    return mask


def set_modes(folder: Path) -> None:
    """The umask's permissions for the folder, its subfolders and the files written into it.

    Files with other hard links are the live folder's (calib links them in) and keep their mode."""
    mask = umask()
    os.chmod(folder, 0o777 & ~mask)
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~mask)
        for name in files:
            path = os.path.join(root, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                os.chmod(path, 0o666 & ~mask)


def _swap(new: Path, out: Path) -> Path | None:
    """Put `new` at `out`; return where the old folder now is, to delete (None: there was none)."""
    if not out.exists() or not any(out.iterdir()):
        os.rename(new, out)  # replaces an empty folder
        return None
    if _exchange(new, out):
        return new
    aside = out.with_name(f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
    os.rename(out, aside)
    try:
        os.rename(new, out)  # the window: killed before this line, out is missing and the old engine is `aside`
    except BaseException:
        if not out.exists():
            os.rename(aside, out)
        raise
    return aside


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step with renameat2(RENAME_EXCHANGE); False where that is unavailable."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # a kernel or filesystem without it
        return False
    raise OSError(err, os.strerror(err), str(b))


def _renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2  # glibc 2.28+, musl 1.1.24+
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # no second copy of gigabytes
    except OSError:
        shutil.copy2(src, dst)
