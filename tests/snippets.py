"""The code blocks of the README and docs/, as a reader copies them (standard library only: .ci/run uses it too).

    code_blocks(path) -> [Block]: every fenced block, with its language and the HTML comment just above it
    readme_command(n) -> the README's command n (the block marked `<!-- command n -->`), verbatim

A comment line right above a fence marks it:
    <!-- command 1 -->             the README's command 1 (CI runs it as written)
    <!-- needs: a USB camera -->   needs hardware the tests do not have: shown, not run
"""

from __future__ import annotations

import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARK = re.compile(r"^<!--\s*(.*?)\s*-->$")
FENCE = re.compile(r"^(\s*)(```+)\s*([\w+-]*)")
ALIASES = {"py": "python", "python3": "python", "bash": "sh", "shell": "sh", "console": "sh"}


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str  # "python", "sh", "" ... (py, python3, bash, shell and console are read as python or sh)
    mark: str  # the comment above the fence ("command 1", "needs: a USB camera"), or ""
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def needs(self) -> str:
        return self.mark[len("needs:"):].strip() if self.mark.startswith("needs:") else ""


def code_blocks(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        indent, ticks, lang = fence.groups()
        above = MARK.match(lines[i - 1].strip()) if i > 0 else None
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip().startswith(ticks)
                    and not lines[j].strip().strip("`")), None)
        if end is None:
            raise ValueError(f"{path}:{i + 1}: code block never closed")
        text = textwrap.dedent("\n".join(lines[i + 1:end])) + "\n"  # a block inside a list item is indented
        blocks.append(Block(path, i + 1, ALIASES.get(lang.lower(), lang.lower()), above.group(1) if above else "", text))
        i = end + 1
    return blocks


def readme_command(n: int, readme: Path = ROOT / "README.md") -> str:
    marked = [b for b in code_blocks(readme) if b.mark == f"command {n}"]
    if len(marked) != 1 or marked[0].lang != "sh":
        raise ValueError(f"{readme}: expected one ```sh block marked <!-- command {n} -->, found {len(marked)}")
    return marked[0].text.strip()


if __name__ == "__main__":
    print(readme_command(int(sys.argv[1])))
