"""Print pins at the lowest versions pyproject.toml allows (``name==floor``), one a line.

``python scripts/floors.py [EXTRA ...]`` reads ``[project].dependencies`` (and the named
optional extras) and pins every requirement to its ``>=`` bound, keeping extras and
markers; a requirement without a lower bound is printed as it is. ``scripts/test-envs
floors`` installs these into a venv of its own and runs the subset (CONTRIBUTING.md).
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement


def floor_pins(pyproject: Path, extras: list[str]) -> list[str]:
    """Return ``name[extras]==floor`` for every direct dependency with a ``>=`` bound."""
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    pins = []
    for text in requirements:
        req = Requirement(text)
        floors = [s.version for s in req.specifier if s.operator == ">="]
        name = req.name + (f"[{','.join(sorted(req.extras))}]" if req.extras else "")
        marker = f"; {req.marker}" if req.marker else ""
        pins.append(f"{name}=={floors[0]}{marker}" if floors else f"{text}")
    return pins


if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    print("\n".join(floor_pins(root / "pyproject.toml", sys.argv[1:])))
