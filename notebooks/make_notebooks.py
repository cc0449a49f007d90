"""Write the notebooks (without outputs) from the cells below: edit here, then run

    python notebooks/make_notebooks.py

CI executes every notebook (tests/test_notebooks.py), so they cannot rot.
"""

from __future__ import annotations

from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent

QUICKSTART = [
    ("md", "# srlib quick start\n\nSuper-resolve the bundled real Sentinel-2 L2A scene, "
           "look at input and output side by side, and compute NDVI."),
    ("code", "import matplotlib.pyplot as plt\nimport numpy as np\nimport srlib"),
    ("code", "ds = srlib.sample_scene()                      # lazy, dask-backed\n"
             "crop = ds.isel(y=slice(400, 528), x=slice(400, 528))\n"
             "sr = srlib.super_resolve(crop)                 # lazy: nothing computed yet\n"
             "sr"),
    ("code", "assert sr.rio.crs == crop.rio.crs\n"
             "assert sr.rio.transform().a == crop.rio.transform().a / 10\n"
             "out = sr.compute()\nout.red.rio.resolution()"),
    ("md", "## Input and output side by side, with a zoom"),
    ("code", "def rgb(d):\n"
             "    stack = np.stack([d.red, d.green, d.blue], axis=-1).astype(float) / 3000\n"
             "    return np.clip(stack, 0, 1)\n\n"
             "fig, axes = plt.subplots(1, 3, figsize=(15, 5))\n"
             "axes[0].imshow(rgb(crop.compute())); axes[0].set_title('input (100 m)')\n"
             "axes[1].imshow(rgb(out)); axes[1].set_title('bicubic x10 (10 m)')\n"
             "axes[2].imshow(rgb(out.isel(y=slice(0, 200), x=slice(0, 200))))\n"
             "axes[2].set_title('zoom')\nfor a in axes: a.set_axis_off()"),
    ("md", "## NDVI"),
    ("code", "valid = out.quality != srlib.Quality.NODATA\n"
             "red, nir = out.red.astype(float), out.nir.astype(float)\n"
             "ndvi = ((nir - red) / (nir + red)).where(valid)\n"
             "ndvi.plot(cmap='RdYlGn', vmin=-0.2, vmax=0.8)\n"
             "float(ndvi.mean())"),
    ("md", "## One call: Zarr, COG and quality checks"),
    ("code", "import tempfile, pathlib\n"
             "tmp = pathlib.Path(tempfile.mkdtemp())\n"
             "report = srlib.super_resolve_to_cog(crop, tmp / 'product.tif', stac=True)\n"
             "print(report.to_table())\nassert report.passed\n"
             "[p.name for p in report.files]  # COG, QC JSON, quicklooks, STAC Item"),
    ("md", "## The quicklook: the whole product, and a zoomed input | output crop"),
    ("code", "from srlib.product.quicklook import quicklook_figure\n"
             "quicklook_figure(crop, tmp / 'product.tif', kind='rgb', crop=40)"),
    ("code", "quicklook_figure(crop, tmp / 'product.tif', kind='ndvi', crop=40)"),
]

STAC = [
    ("md", "# A tile or an AOI from a STAC catalogue\n\n"
           "Written for Earth Search v1 (the default catalogue). CI runs it against the "
           "loopback STAC API and S3 server of the test suite, through `SRLIB_CATALOG`."),
    ("code", "import os\nimport srlib\n"
             "catalog = os.environ.get('SRLIB_CATALOG', srlib.EARTH_SEARCH)\n"
             "date = os.environ.get('SRLIB_DATE', '20250731')\n"
             "mgrs = os.environ.get('SRLIB_MGRS', '24MWV')\n"
             "aoi = tuple(float(v) for v in os.environ.get('SRLIB_AOI', "
             "'-38.95 -5.2 -38.9 -5.15').split())"),
    ("code", "items = srlib.search_items(date=date, mgrs=mgrs, catalog=catalog)\n"
             "[it.id for it in items]"),
    ("code", "tile = srlib.load_s2(date=date, mgrs=mgrs, catalog=catalog)  # whole tile, lazy\n"
             "tile"),
    ("code", "crop = srlib.load_s2(date=date, aoi=aoi, catalog=catalog)     # AOI, snapped\n"
             "sr = srlib.super_resolve(crop)\n"
             "out = sr.compute()\n"
             "print(crop.sizes, '->', out.sizes, out.rio.crs)\n"
             "assert out.red.shape == (crop.sizes['y'] * 10, crop.sizes['x'] * 10)"),
]

BYO = [
    ("md", "# Bring your own checkpoint\n\nA Swin2SR checkpoint (`.pth`: a state dict, "
           "bare or under `params_ema`/`params`/`model`/`state_dict`) plus a stats JSON. "
           "Here a randomly initialised network is saved and loaded back, to show the "
           "format; use your trained weights instead."),
    ("code", "import json, pathlib, tempfile\nimport torch\nimport srlib\n"
             "from srlib.models.swin2sr import Swin2SR\n"
             "tmp = pathlib.Path(tempfile.mkdtemp())\n"
             "arch = dict(img_size=32, window_size=8, embed_dim=16, depths=(2,), "
             "num_heads=(2,), mlp_ratio=2.0, upsampler='pixelshuffledirect')\n"
             "net = Swin2SR(in_chans=10, out_chans=4, upscale=10, **arch)\n"
             "torch.save({'params_ema': net.state_dict()}, tmp / 'model.pth')"),
    ("code", "stats = {'input': {'bands': list(srlib.S2_BANDS), 'mean': [1500.0] * 10, "
             "'std': [1000.0] * 10},\n"
             "         'output': {'bands': list(srlib.OUTPUT_BANDS), 'mean': [1500.0] * 4, "
             "'std': [1000.0] * 4}}\n"
             "(tmp / 'stats.json').write_text(json.dumps(stats))"),
    ("code", "spec = srlib.load_model('swin2sr', checkpoint=tmp / 'model.pth', "
             "stats=tmp / 'stats.json', **arch)\n"
             "spec"),
    ("code", "crop = srlib.sample_scene().isel(y=slice(0, 64), x=slice(0, 64))\n"
             "sr = srlib.super_resolve(crop, spec, chunks=32)\n"
             "out = sr.compute()\n"
             "out.sizes"),
    ("md", "A checkpoint whose layout does not match the architecture options fails with "
           "the missing, unexpected and mis-shaped keys:"),
    ("code", "try:\n    srlib.load_model('swin2sr', checkpoint=tmp / 'model.pth', "
             "**{**arch, 'embed_dim': 24})\n"
             "except srlib.ModelError as err:\n    print(str(err)[:300])"),
    ("md", "## Is it better than bicubic, and how fast is it here?\n\n"
           "`srlib.bench` (the `srlib bench` command) answers with the field's standard "
           "figures, for the model and the baselines side by side. **Wald's protocol**: the "
           "scene averaged by the model's scale, super-resolved back through "
           "`super_resolve` and compared with the original: PSNR, SSIM and RMSE per band "
           "(higher, higher, lower is better), SAM (spectral angle, degrees) and ERGAS "
           "(relative global error) over the bands (lower is better). **Consistency**: the "
           "product averaged back onto the input grid against the input: reflectance error "
           "(x 10000), spectral angle, and the spatial shift in input pixels (all near 0 for "
           "a faithful model). **Speed**: input Mpx/s and the peak memory of that run. "
           "This random network scores far below the baselines: that is what the table is "
           "for."),
    ("code", "from srlib.bench import bench, table\n"
             "results = bench(spec, baselines=('bicubic', 'nearest'), crop=48)\n"
             "print(table(results))"),
]


def build(cells: list[tuple[str, str]], name: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md"
                else nbformat.v4.new_code_cell(src) for kind, src in cells]
    nbformat.write(nb, HERE / name)


if __name__ == "__main__":
    build(QUICKSTART, "01_quickstart.ipynb")
    build(STAC, "02_tile_or_aoi_from_stac.ipynb")
    build(BYO, "03_bring_your_own_checkpoint.ipynb")
