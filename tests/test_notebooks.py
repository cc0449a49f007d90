"""Every notebook runs top to bottom (the STAC one against the loopback servers)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from .servers import CREDENTIALS, loopback_sources

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


PLOTS = ("plt.", ".plot(", "imshow", "quicklook_figure")


def _run(path: Path, cwd: Path) -> None:
    """Execute a notebook as Jupyter does (the kernel's inline backend, nothing forced).

    A cell that plots must show an image: a forced backend (``matplotlib.use('Agg')``)
    runs without error but hides every plot, which this catches.
    """
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(cwd)}}).execute()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        assert "matplotlib.use(" not in cell.source, f"{path.name} forces a backend"
        if any(p in cell.source for p in PLOTS):
            images = [o for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
            assert images, f"{path.name}: a plotting cell showed no image:\n{cell.source}"


@pytest.mark.parametrize("name", ["01_quickstart.ipynb", "03_bring_your_own_checkpoint.ipynb"])
def test_notebook_runs(name, tmp_path):
    _run(NOTEBOOKS / name, tmp_path)


def test_a_notebook_that_hides_its_plots_fails(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
        "plt.plot([1, 2])")])
    path = tmp_path / "hidden.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(AssertionError, match="forces a backend"):
        _run(path, tmp_path)


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
