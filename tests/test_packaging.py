"""A first hour that works: declared dependencies, one version, a fast ``srlib --help``."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import srlib

ROOT = Path(__file__).resolve().parents[1]


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=\[ ;!~]", r)[0].lower().replace("_", "-") for r in requirements}


def test_every_imported_package_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _names(project["dependencies"])
    declared |= _names(project["optional-dependencies"]["distributed"])
    declared |= _names(project["optional-dependencies"]["bench"])  # srlib bench's metrics
    modules = set()
    for path in (ROOT / "srlib").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    owners = md.packages_distributions()
    undeclared = {m: owners.get(m, ["?"]) for m in modules - set(sys.stdlib_module_names)
                  - {"srlib"}
                  if not {d.lower() for d in owners.get(m, [])} & declared}
    assert not undeclared, f"imported but not in pyproject.toml: {undeclared}"


def test_one_version_source():
    assert srlib.__version__ == md.version("srlib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert srlib.__version__ == project["version"]


def test_help_answers_without_importing_torch():
    code = ("import sys\nfrom srlib.cli import main\n"
            "for args in (['--help'], ['dr', '--help'], ['qc', '--help']):\n"
            "    try:\n        main(args)\n    except SystemExit as e:\n"
            "        assert e.code == 0, (args, e.code)\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            "assert 'dask' not in sys.modules, 'dask imported'\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert "Usage: " in run.stdout and "--dry-run" in run.stdout


def test_environment_yml_matches_pyproject_runtime_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    text = (ROOT / "environment.yml").read_text()
    listed = _names([line.strip().lstrip("- ").strip() for line in text.splitlines()
                     if line.strip().startswith("- ") and ":" not in line])
    extras = project["optional-dependencies"]
    runtime = _names(project["dependencies"]) | _names(extras["distributed"]) | _names(
        extras["bench"])
    aliases = {"psycopg": "psycopg", "torch": "pytorch"}  # conda-forge names
    missing = {r for r in runtime if r not in listed and aliases.get(r) not in listed}
    assert not missing, f"environment.yml lacks {missing}"
    test_only = _names(project["optional-dependencies"]["test"]) - runtime
    assert not test_only & listed, f"environment.yml installs test tools {test_only & listed}"
