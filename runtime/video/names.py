"""Stream names: how several sources captioned at once are told apart (events, JSON Lines, console, files).

    check_name(name, where)       FlashVLError unless `name` is 1-32 letters, digits, '_', '-' or '.',
                                  starting with a letter or digit (it also names --save files)
    split_name(flag, value)       'name=door:/path/a.mp4' -> ('door', '/path/a.mp4'); no prefix -> (None, value)
    default_names(bases, given)   bases ['video', 'camera', 'video'], given [None, None, 'yard']
                                  -> ['video0', 'camera0', 'yard']: the k-th source of a kind is KIND{k-1}
    check_unique(names, labels)   FlashVLError naming the first name given to two sources

On the command line a source is named with a `name=NAME:` prefix (`--video name=door:/path/a.mp4`,
`--camera name=yard:1`, `--url name=gate:rtsp://...`).  A name never holds ':', so the first ':' ends
it; a file whose path really begins with `name=` is given as `./name=...`.
"""

from __future__ import annotations

import re

from runtime.errors import FlashVLError

PREFIX = "name="
NAME_RULE = "1-32 letters, digits, '_', '-' or '.', starting with a letter or digit"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")


def check_name(name, where: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise FlashVLError(f"{where}: a stream name is {NAME_RULE}, got {name!r}; e.g. door, cam-2, yard_east")
    return name


def split_name(flag: str, value: str) -> tuple[str | None, str]:
    """A source flag's value -> (its name or None, the source itself)."""
    if not value.startswith(PREFIX):
        return None, value
    name, sep, target = value[len(PREFIX):].partition(":")
    if not sep or not target or not _NAME.fullmatch(name):
        raise FlashVLError(f"{flag} {value}: expected name=NAME:SOURCE with NAME {NAME_RULE}, e.g. {flag} "
                           f"name=door:{'1' if flag == '--camera' else 'clip.mp4'}; a path that begins with "
                           f"name= is written ./name=...")
    return name, target


def default_names(bases: list[str], given: list[str | None]) -> list[str]:
    """The names of sources in order: the one given, else KIND and its position among the sources of that kind."""
    seen: dict[str, int] = {}
    out = []
    for base, name in zip(bases, given):
        k = seen.get(base, 0)
        seen[base] = k + 1
        out.append(name if name is not None else f"{base}{k}")
    return out


def check_unique(names: list[str], labels: list[str]) -> None:
    """labels: how each source was given (e.g. `--video a.mp4`), for the error."""
    first: dict[str, str] = {}
    for name, label in zip(names, labels):
        if name in first:
            raise FlashVLError(f"stream name {name!r} is given to two sources ({first[name]} and {label}); name "
                               f"each source apart with name=NAME:, e.g. --video name=door:a.mp4")
        first[name] = label
