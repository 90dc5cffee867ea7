"""The argument parser every `python -m ...` command of this project uses: a mistake is one line.

argparse's own error() prints the whole usage block and then `prog: error: ...`. A user who mistypes an
option gets instead one `error: ...` line that names the option and where the options are listed, and
exit code 2, like every other mistake the CLIs report. `--help` still prints the full usage, with each
command's module docstring as written (RawDescriptionHelpFormatter by default).
"""

from __future__ import annotations

import argparse
import sys


class CliParser(argparse.ArgumentParser):
    def __init__(self, *args, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def error(self, message: str):  # noqa: D102  (argparse's hook; never returns)
        print(f"error: {message}; `{self.prog} --help` lists the options", file=sys.stderr)
        sys.exit(2)
