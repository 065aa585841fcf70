"""The README's commands paste and run in bash as printed (issue #14): every fenced ``bash`` block
of README.md and docs/*.md passes ``bash -n``, and every ``bilevel-run`` command in them composes
(each job of a sweep, through the same check the command line runs before Hydra starts), and
every ``bilevel-figure NAME`` names a registered figure."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from bilevel.app.config import PACKAGE_ROOT
from bilevel.app.run import validate_command_line

DOCS = [PACKAGE_ROOT / "README.md", *sorted((PACKAGE_ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```bash\n(.*?)```", re.S)


def bash_blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text())


def commands(block: str) -> list[list[str]]:
    """The block's commands as argument lists (continuation lines joined, comments dropped,
    ``a && b`` split)."""
    joined = block.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            out.append(words[:cut])
            words = words[cut + 1 :]
    return [c for c in out if c]


@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_bash_blocks_parse(path):
    for block in bash_blocks(path):
        proc = subprocess.run(["bash", "-n"], input=block, text=True, capture_output=True)
        assert proc.returncode == 0, f"{path.name}: {proc.stderr}\n{block}"


def test_the_readme_bilevel_run_commands_compose():
    runs = [c for p in DOCS for b in bash_blocks(p) for c in commands(b) if c[0] == "bilevel-run"]
    assert len(runs) >= 8
    for command in runs:
        validate_command_line(command[1:])  # raises ConfigError with the offending key


def test_the_readme_figure_names_are_registered():
    from bilevel.app.figure import available

    names = set(available())
    for path in DOCS:
        for command in (c for b in bash_blocks(path) for c in commands(b)):
            if command[0] == "bilevel-figure":
                name = next((w for w in command[1:] if not w.startswith("-")), None)
                if name and "=" not in name and name.upper() != name:
                    assert name in names, f"{path.name}: bilevel-figure {name}"
