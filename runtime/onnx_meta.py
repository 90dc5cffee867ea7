"""Read an ONNX file's `metadata_props` without the onnx package (not a runtime dependency).

    read_metadata(path) -> {key: value}

An ONNX file is a protobuf `ModelProto`; its metadata_props are field 14, a repeated
`StringStringEntryProto` (key = field 1, value = field 2).  Only the top-level fields are walked:
the graph (field 7, megabytes at full size even with external weights) is skipped by seeking
past it, so reading the record of a 3 GB decoder costs a few small reads.
"""

from __future__ import annotations

from pathlib import Path

from runtime.errors import EngineError

_METADATA_PROPS = 14
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def read_metadata(path: Path) -> dict[str, str]:
    """The model's metadata_props; EngineError if the file is not a protobuf this reader can walk."""
    out: dict[str, str] = {}
    size = Path(path).stat().st_size
    with open(path, "rb") as f:
        while f.tell() < size:
            field, wire = _tag(f, path)
            if wire == _VARINT:
                _varint(f, path)
            elif wire == _I64:
                f.seek(8, 1)
            elif wire == _I32:
                f.seek(4, 1)
            elif wire == _LEN:
                n = _varint(f, path)
                if f.tell() + n > size:
                    raise EngineError(f"{path}: field {field} runs past the end of the file; the graph is truncated "
                                      f"or not ONNX, re-export the engine folder")
                if field == _METADATA_PROPS:
                    key, value = _entry(f.read(n), path)
                    out[key] = value
                else:
                    f.seek(n, 1)
            else:
                raise EngineError(f"{path}: not an ONNX protobuf (wire type {wire} at byte {f.tell()}); "
                                  f"re-export the engine folder")
    return out


def _tag(f, path) -> tuple[int, int]:
    key = _varint(f, path)
    return key >> 3, key & 7


def _varint(f, path) -> int:
    value, shift = 0, 0
    while True:
        b = f.read(1)
        if not b or shift > 63:
            raise EngineError(f"{path}: not an ONNX protobuf (a varint is cut off at byte {f.tell()}); "
                              f"re-export the engine folder")
        value |= (b[0] & 0x7F) << shift
        shift += 7
        if b[0] < 0x80:
            return value


def _entry(data: bytes, path) -> tuple[str, str]:
    """StringStringEntryProto bytes -> (key, value)."""
    import io

    f, size, got = io.BytesIO(data), len(data), {1: "", 2: ""}
    while f.tell() < size:
        field, wire = _tag(f, path)
        if wire != _LEN:
            raise EngineError(f"{path}: a metadata entry has a field of wire type {wire}; re-export the engine folder")
        n = _varint(f, path)
        raw = f.read(n)
        if field in got:
            try:
                got[field] = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise EngineError(f"{path}: a metadata entry is not UTF-8; re-export the engine folder") from None
    return got[1], got[2]
