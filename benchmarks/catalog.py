"""Every file in benchmarks/results with the command(s) recorded in it, to rerun them.

    python benchmarks/catalog.py            # file, then each recorded command

A results file names the command that wrote it near its top (a Markdown table's own header, or
the JSON beside it). Files without a command of their own (a JSON or PNG written beside a
Markdown table) are listed under that table.
"""

from __future__ import annotations

import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
COMMAND = re.compile(r"`((?:OMP_NUM_THREADS=\d+ )?(?:cd [\w/.]+ && )?(?:python|qnnrepair) [^`]+)`")


def commands(path: Path) -> list[str]:
    """The distinct commands quoted in a results file, in order."""
    found = COMMAND.findall(path.read_text(errors="replace"))
    return list(dict.fromkeys(found))


def main() -> None:
    tables = sorted(RESULTS.rglob("*.md"))
    companions = {p for p in RESULTS.rglob("*") if p.is_file() and p.suffix != ".md"}
    for table in tables:
        print(table.relative_to(RESULTS.parent))
        for command in commands(table) or ["(no command recorded)"]:
            print(f"    {command}")
        beside = sorted(p for p in companions if p.stem == table.stem and p.parent == table.parent)
        for path in beside:
            print(f"    writes also {path.relative_to(RESULTS.parent)}")
            companions.discard(path)
    for path in sorted(companions):
        print(f"{path.relative_to(RESULTS.parent)}\n    (see the table it belongs to)")


if __name__ == "__main__":
    main()
