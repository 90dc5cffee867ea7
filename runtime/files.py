"""File sizes and sha256 of an engine folder: recorded by the exporter, checked by the runtime.

Hashing a multi-GB folder at every start would cost seconds on a Jetson, so a full
check is remembered in `.verified.json` beside the manifest, keyed by each file's
size and mtime; a file that changes in any way is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from runtime.errors import EngineError
from runtime.manifest import FileEntry

VERIFIED_FILE = ".verified.json"
_CHUNK = 1 << 22


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_entry(path: Path, record_as: Path | str) -> FileEntry:
    return FileEntry(path=str(record_as), bytes=path.stat().st_size, sha256=sha256_of(path))


def verify_files(engine_dir: Path, entries: tuple[FileEntry, ...]) -> None:
    """Raise EngineError naming the first file that is missing, resized or altered."""
    stamps = _read_stamps(engine_dir)
    fresh = {}
    for e in entries:
        path = engine_dir / e.path
        if path.exists() and not path.is_file():
            raise EngineError(f"{path}: listed in manifest.json as a file, but it is a folder, device or pipe; copy "
                              f"the whole engine folder again or re-export it")
        if not path.is_file():
            raise EngineError(f"{path}: listed in manifest.json but missing; copy the whole engine folder "
                              f"or re-export it")
        st = path.stat()
        if st.st_size != e.bytes:
            raise EngineError(f"{path}: {st.st_size} bytes, manifest.json says {e.bytes}; the file is truncated "
                              f"or from another export, re-export the engine folder")
        stamp = [st.st_size, st.st_mtime_ns, e.sha256]
        if stamps.get(e.path) != stamp:
            got = sha256_of(path)
            if got != e.sha256:
                raise EngineError(f"{path}: sha256 {got}, manifest.json says {e.sha256}; the file is corrupt or "
                                  f"from another export, re-export the engine folder")
        fresh[e.path] = stamp
    merged = {**stamps, **fresh}  # other files' stamps stay: the ONNX and TensorRT backends check different sets
    if merged != stamps:
        _write_stamps(engine_dir, merged)


def _read_stamps(engine_dir: Path) -> dict:
    try:
        data = json.loads((engine_dir / VERIFIED_FILE).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_stamps(engine_dir: Path, stamps: dict) -> None:
    tmp = engine_dir / (VERIFIED_FILE + f".{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(stamps))
        os.replace(tmp, engine_dir / VERIFIED_FILE)
    except OSError:  # a read-only engine folder is fine: it is just hashed every time
        pass


def process_alive(pid: int) -> bool:
    """Whether process `pid` still runs: a temporary file named after a dead one is a killed run's leftover."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True
