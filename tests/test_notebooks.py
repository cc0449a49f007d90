"""Every notebook runs top to bottom (the STAC one against the loopback servers)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from .servers import CREDENTIALS, loopback_sources

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _run(path: Path, cwd: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(cwd)}}).execute()


@pytest.mark.parametrize("name", ["01_quickstart.ipynb", "03_bring_your_own_checkpoint.ipynb"])
def test_notebook_runs(name, tmp_path):
    _run(NOTEBOOKS / name, tmp_path)


@pytest.mark.integration
def test_stac_notebook_runs_against_loopback_servers(tmp_path, monkeypatch):
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    with loopback_sources(tmp_path / "stac") as (url, endpoint, _item):
        monkeypatch.setenv("SRLIB_CATALOG", url)
        monkeypatch.setenv("SRLIB_DATE", "20200219")
        monkeypatch.setenv("SRLIB_MGRS", "29RKH")
        monkeypatch.setenv("SRLIB_AOI", "-11.5 24.5 -11.45 24.55")
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://{endpoint}")
        monkeypatch.setenv("AWS_VIRTUAL_HOSTING", "FALSE")
        _run(NOTEBOOKS / "02_tile_or_aoi_from_stac.ipynb", tmp_path)
