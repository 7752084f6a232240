"""`python -m hybrid` (or the `hybrid` console script): list the recipes and how to launch them."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def recipes() -> dict[str, str]:
    """Recipe name -> first line of its docstring, read without importing (recipes pull in heavy libraries)."""
    found = {}
    for path in sorted(RECIPES.glob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        found[path.stem] = doc.strip().splitlines()[0] if doc.strip() else ""
    return found


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] not in ("list", "-h", "--help"):
        print(f"unknown command {argv[0]!r}; `python -m hybrid` lists the recipes", file=sys.stderr)
        return 2
    found = recipes()
    if not found:
        print(f"no recipes found in {RECIPES} (recipes ship with the source checkout)", file=sys.stderr)
        return 1
    print("hybrid recipes (run from the repository root):\n")
    width = max(len(name) for name in found)
    for name, summary in found.items():
        print(f"  {name:<{width}}  {summary}")
    print("\nLaunch:  python recipes/<name>.py --config configs/<...>.yaml [key=value ...]")
    print("   or:   accelerate launch [--num_processes N] recipes/<name>.py --config ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
