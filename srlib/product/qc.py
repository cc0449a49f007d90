"""Quality checks that gate a product: the legacy system's seven checks, made blocking.

Each check gives a :class:`CheckResult` (``pass``, ``warn`` or ``fail``; the measured
value; the threshold). ``warn`` is used only when a check cannot be measured (no timings
given); any ``fail`` makes :meth:`QCReport.raise_for_failures` raise :class:`QCFailed`.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import textwrap
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
import rioxarray  # noqa: F401  (registers the .rio accessor)
from rio_cogeo.cogeo import cog_validate

from ..bands import OUTPUT_NODATA, Quality
from ..config import QCThresholds, Settings
from ..errors import InputError, QCFailed
from ..files import write_atomic
from ..progress import report

__all__ = ["DEFAULT_THRESHOLDS", "CheckResult", "QCReport", "check_quality", "check_readable",
           "deploy_limit_bytes", "product_source", "timing_limits"]

Status = Literal["pass", "warn", "fail"]

#: The default thresholds of the checks, by name (see :class:`srlib.config.QCThresholds`).
DEFAULT_THRESHOLDS: dict[str, Any] = QCThresholds().to_dict()


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one named check."""

    name: str
    status: Status
    value: Any
    threshold: str
    message: str = ""


@dataclass
class QCReport:
    """The results of :func:`check_quality` for one product."""

    path: str
    checks: list[CheckResult]
    timings: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    #: The files of the product, once written (not part of the JSON)
    files: list[Path] = field(default_factory=list, repr=False)

    @property
    def failed(self) -> list[str]:
        """Names of the failed checks."""
        return [c.name for c in self.checks if c.status == "fail"]

    @property
    def passed(self) -> bool:
        """True when no check failed."""
        return not self.failed

    def __getitem__(self, name: str) -> CheckResult:
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {"path": self.path, "passed": self.passed, "failed": self.failed,
                "created": self.created, "timings": self.timings,
                "thresholds": self.thresholds, "model": self.model,
                "checks": [asdict(c) for c in self.checks]}

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """Serialise to JSON; also write it to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2, default=_jsonable)
        if path is not None:
            write_atomic(path, text)
        return text

    def to_table(self, *, width: int = 64) -> str:
        """Return a plain-text table, one row per check.

        A per-band value takes a line per band, and long cells wrap at ``width``
        characters, so that a terminal shows each check at once (a row used to run to a
        thousand characters).
        """
        rows = [(["check"], ["status"], ["value"], ["threshold"], ["note"])]
        rows += [([c.name], [c.status.upper()], _cell(c.value, width),
                  _wrap(c.threshold, width // 2 + 8), _wrap(c.message, width))
                 for c in self.checks]
        widths = [max(len(line) for r in rows for line in r[i]) for i in range(4)]
        lines = []
        for row in rows:
            for parts in itertools.zip_longest(*row, fillvalue=""):
                cells = [parts[i].ljust(widths[i]) for i in range(4)]
                lines.append("  ".join([*cells, parts[4]]).rstrip())
        verdict = "PASSED" if self.passed else f"FAILED: {', '.join(self.failed)}"
        return "\n".join([*lines, f"QC {verdict} ({self.path})"])

    def __str__(self) -> str:
        return self.to_table()

    def raise_for_failures(self) -> None:
        """Raise :class:`QCFailed` naming the failed checks, if any."""
        if self.failed:
            raise QCFailed(self.failed, self)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)


def _wrap(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, width, break_on_hyphens=False) or [""]


def _cell(value: Any, width: int) -> list[str]:
    """Return a table cell's lines: one per band where the value is per band, wrapped."""
    if isinstance(value, dict) and any(isinstance(v, dict) for v in value.values()):
        items = [f"{k}({_fmt(v)})" if isinstance(v, dict) else f"{k}={_fmt(v)}"
                 for k, v in value.items()]
        return [line for item in items for line in
                textwrap.wrap(item, width, subsequent_indent="    ", break_on_hyphens=False)]
    return _wrap(_fmt(value), width)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}({_fmt(v)})" if isinstance(v, dict) else f"{k}={_fmt(v)}"
                         for k, v in value.items())
    return str(value)


def _result(name: str, ok: bool, value: Any, threshold: str, message: str = "") -> CheckResult:
    return CheckResult(name, "pass" if ok else "fail", value, threshold, message)


def _sample_level(src: rasterio.DatasetReader, max_pixels: int) -> tuple[int, int]:
    """Smallest read shape (an overview level) that still holds >= max_pixels or full res."""
    h, w = src.height, src.width
    for factor in [1, *src.overviews(1)][::-1]:
        oh, ow = math.ceil(h / factor), math.ceil(w / factor)
        if oh * ow >= max_pixels:
            return oh, ow
    return h, w


def _entropy(values: np.ndarray) -> float:
    hist = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    p = hist[hist > 0] / hist.sum() if hist.sum() else np.array([1.0])
    return float(-(p * np.log2(p)).sum())


def check_quality(
    cog_path: str | os.PathLike,
    *,
    timings: Mapping[str, float] | None = None,
    thresholds: QCThresholds | Mapping[str, Any] | None = None,
    source: Any | None = None,
    coverage: float | None = None,
) -> QCReport:
    """Run the eight quality checks on a product COG.

    Checks: ``tiling`` (512 x 512 internal tiles), ``overviews`` (at least 4 levels, or as
    many as the size allows), ``values`` (mean and std of the reflectance within range,
    nodata under 95%, not all zero; measured on the overview closest above 2048 x 2048 px),
    ``bands`` (5 bands, int16), ``visual`` (Shannon entropy of the 8-bit RGB above 0),
    ``timing`` (each stage within the time its output pixels allow, see
    :func:`timing_limits`), ``deploy`` (compressed below the raw size of the pixels and
    under any absolute cap, see :func:`deploy_limit_bytes`; a valid COG; throughput above
    50 ha/min from ``total_s``) and ``consistency`` (see :func:`consistency`; warns
    without ``source``). The limits scale with the product (:class:`QCThresholds`).

    Parameters
    ----------
    cog_path : str or PathLike
        The product.
    timings : mapping, optional
        Seconds per stage: ``gpu_s`` or ``cpu_s`` (inference), ``total_s``. Without them
        the timing check and the throughput part of ``deploy`` warn.
    thresholds : QCThresholds or mapping, optional
        The thresholds, or overrides of the settings' ones (:func:`resolve_thresholds`);
        recorded in the report.
    source : xarray.Dataset or xarray.DataArray, optional
        The input scene the product was made from, for the ``consistency`` check.
    coverage : float, optional
        The fraction of the product's grid that the input data cover (their footprints;
        ``attrs["data_coverage"]`` of a scene loaded from STAC): the ``coverage`` check
        fails a product whose valid pixels cover less (minus ``coverage_tolerance``).
        Without it the check warns "not checked" and reports the covered fraction.

    Returns
    -------
    QCReport

    Raises
    ------
    InputError
        The file is missing or not a readable GeoTIFF (truncated, another format).
    """
    path = check_readable(cog_path)
    th = resolve_thresholds(thresholds)
    timings = {k: float(v) for k, v in (timings or {}).items()}
    report("qc", 0, 3, "steps")
    with rasterio.open(path) as src:
        checks = _layout_checks(src, th)
        refl, valid = _sample(src, th)
        checks += [_values_check(src, refl, th), _bands_check(src, th),
                   _visual_check(src, refl, valid, th)]
        covered = float(valid.mean()) if valid.size else 0.0
        report("qc", 1, 3, "steps")
        area_ha = src.width * src.height * abs(src.res[0] * src.res[1]) / 1e4
        compression = src.compression.name if src.compression else None
        limit = deploy_limit_bytes(src.width, src.height, src.count,
                                   max(np.dtype(d).itemsize for d in src.dtypes), th,
                                   overviews=len(src.overviews(1)))
        pixels = src.width * src.height
    checks += [_timing_check(timings, th, pixels),
               _deploy_check(path, compression, area_ha, timings, th, limit)]
    report("qc", 2, 3, "steps")
    checks.append(consistency(path, source, thresholds=th))
    checks.append(_coverage_check(covered, coverage, th))
    report("qc", 3, 3, "steps")
    return QCReport(str(path), checks, timings, thresholds=th.to_dict())


def check_readable(cog_path: str | os.PathLike) -> Path:
    """Return the path of a GeoTIFF whose first and last pixels read.

    Raises
    ------
    InputError
        The file is missing, truncated or not a GeoTIFF.
    """
    path = Path(cog_path)
    if not path.is_file():
        raise InputError(f"{path} does not exist; pass the path of a product COG")
    try:
        with rasterio.open(path) as src:
            src.read(1, window=((0, 1), (0, 1)))
            src.read(1, window=((src.height - 1, src.height), (src.width - 1, src.width)))
    except (rasterio.errors.RasterioError, rasterio.errors.RasterioIOError) as err:
        # (RasterioIOError is no RasterioError before rasterio 1.4)
        raise InputError(f"{path} is not a readable GeoTIFF ({' '.join(str(err).split())}); "
                         "it may be truncated or another format: rewrite it (srlib cog, or "
                         "rerun the job)") from None
    return path


def _layout_checks(src: rasterio.DatasetReader, th: QCThresholds) -> list[CheckResult]:
    """``tiling`` (square internal tiles of the product's size) and ``overviews``."""
    blocks = set(src.block_shapes)
    tile = th.tile_size
    tiling = _result("tiling", blocks == {(tile, tile)} and bool(src.profile.get("tiled")),
                     sorted(blocks), f"{tile}x{tile}")
    n_ovr = len(src.overviews(1))
    needed, size = 0, max(src.height, src.width)
    while size > tile and needed < th.min_overviews:
        size, needed = math.ceil(size / 2), needed + 1
    overviews = _result("overviews", n_ovr >= needed, n_ovr, f">= {needed}",
                        "" if needed == th.min_overviews else "small image")
    return [tiling, overviews]


def _sample(src: rasterio.DatasetReader, th: QCThresholds) -> tuple[np.ndarray, np.ndarray]:
    """Read every band at the sampled level; return them and where all are valid."""
    shape = _sample_level(src, th.sample_pixels)
    refl = src.read(list(range(1, src.count + 1)), out_shape=(src.count, *shape),
                    resampling=rasterio.enums.Resampling.nearest)
    nodata = src.nodata if src.nodata is not None else OUTPUT_NODATA
    return refl, (refl[: min(src.count, 4)] != nodata).all(axis=0)


def _full_resolution(src: rasterio.DatasetReader, th: QCThresholds) -> np.ndarray | None:
    """Read ``full_resolution_windows`` tiles at full resolution, spread over the product.

    None when the sampled level is the full resolution already. A band that is right in
    the overviews but dead at full resolution is found here.
    """
    if _sample_level(src, th.sample_pixels) == (src.height, src.width):
        return None
    tile, n = th.tile_size, max(1, th.full_resolution_windows)
    parts = []
    for k in range(n):  # along the diagonal: centre first, then spread out
        f = 0.5 if k == 0 else k / (n + 1)
        r0 = int(max(0, min(src.height - tile, f * src.height - tile / 2)))
        c0 = int(max(0, min(src.width - tile, f * src.width - tile / 2)))
        parts.append(src.read(window=((r0, min(src.height, r0 + tile)),
                                      (c0, min(src.width, c0 + tile)))))
    return np.concatenate([p.reshape(p.shape[0], -1) for p in parts], axis=1)


def _band_names(src: rasterio.DatasetReader) -> list[str]:
    return [d or f"band{i + 1}" for i, d in enumerate(src.descriptions)]


def _band_stats(values: np.ndarray, nodata: float) -> dict[str, float]:
    valid = values != nodata
    vals = values[valid].astype(np.float64)
    return {"mean": float(vals.mean()) if vals.size else float("nan"),
            "std": float(vals.std()) if vals.size else float("nan"),
            "nodata": 1.0 - float(valid.mean()) if valid.size else 1.0,
            "zero": float((vals == 0).mean()) if vals.size else 1.0}


def _values_check(src: rasterio.DatasetReader, refl: np.ndarray, th: QCThresholds
                  ) -> CheckResult:
    """Check each band's values; the quality band's codes; full-resolution windows.

    Per reflectance band: mean and std of the valid values in range, nodata below its
    limit, not all zero, on the sampled level and on full-resolution windows (a band dead
    only at full resolution fails). The quality band: known codes, nodata below the limit.
    """
    nodata = src.nodata if src.nodata is not None else OUTPUT_NODATA
    names = _band_names(src)
    (lo, hi), (slo, shi) = th.mean_range, th.std_range
    value: dict[str, Any] = {}
    bad: list[str] = []

    def judge(label: str, band: np.ndarray) -> None:
        stats = _band_stats(band, nodata)
        value[label] = {k: round(v, 4) for k, v in stats.items()}
        ok = (lo <= stats["mean"] <= hi and slo <= stats["std"] <= shi
              and stats["nodata"] < th.max_nodata_fraction and stats["zero"] < 1.0)
        if not ok:
            bad.append(label)

    for i, name in enumerate(names[: min(src.count, 4)]):
        judge(name, refl[i])
    if src.count > 4:  # the quality band: code 0 or the file's nodata is nodata there
        q = refl[4]
        known = {int(v) for v in Quality} | {int(nodata)}
        codes = set(np.unique(q).tolist())
        frac = float(((q == Quality.NODATA) | (q == nodata)).mean()) if q.size else 1.0
        value[names[4]] = {"nodata": round(frac, 4), "codes": sorted(codes)}
        if frac >= th.max_nodata_fraction or not codes <= known:
            bad.append(names[4])
    full = _full_resolution(src, th)
    if full is not None:
        for i, name in enumerate(names[: min(src.count, 4)]):
            judge(f"{name}@full", full[i])
    threshold = (f"per band: mean in [{lo}, {hi}], std in [{slo}, {shi}], nodata < "
                 f"{th.max_nodata_fraction}, not all zero (also at full resolution); "
                 "quality codes known")
    return _result("values", not bad, value, threshold, f"off: {bad}" if bad else "")


def _bands_check(src: rasterio.DatasetReader, th: QCThresholds) -> CheckResult:
    dtypes = set(src.dtypes)
    return _result("bands", src.count == th.band_count and dtypes == {th.dtype},
                   f"{src.count} x {'/'.join(sorted(dtypes))}", f"{th.band_count} x {th.dtype}")


def _visual_check(src: rasterio.DatasetReader, refl: np.ndarray, valid: np.ndarray,
                  th: QCThresholds) -> CheckResult:
    """Check the Shannon entropy of each reflectance band (8-bit, 1-99 % stretched).

    A constant band carries no picture: 0 bits.
    """
    value = {}
    for i, name in enumerate(_band_names(src)[: min(src.count, 4)]):
        vals = refl[i][valid].astype(np.float64)
        lo, hi = np.percentile(vals, [1, 99]) if vals.size else (0.0, 0.0)
        if hi <= lo:
            value[name] = 0.0
            continue
        band8 = np.clip((vals - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)
        value[name] = round(_entropy(band8), 4)
    flat = [k for k, v in value.items() if not v > th.min_entropy]
    return _result("visual", bool(value) and not flat, value,
                   f"per band > {th.min_entropy} bits", f"flat: {flat}" if flat else "")


def _coverage_check(covered: float, expected: float | None,
                    th: QCThresholds) -> CheckResult:
    """Check that the valid pixels cover as much of the grid as the input data do."""
    value = {"valid": round(covered, 4), "expected": expected}
    if expected is None:
        return CheckResult("coverage", "warn", value, "reported",
                           "not checked: the data's coverage is not known here")
    limit = max(0.0, float(expected) - th.coverage_tolerance)
    return _result("coverage", covered >= limit, value, f">= {limit:.3f} of the grid",
                   "" if covered >= limit else "the product covers less than its data")


def timing_limits(output_px: int, th: QCThresholds) -> dict[str, float]:
    """Return the seconds each stage may take for ``output_px`` output pixels."""
    mpx = output_px / 1e6
    limits = {"gpu_s": mpx / th.min_gpu_mpx_per_s, "cpu_s": mpx / th.min_cpu_mpx_per_s,
              "total_s": mpx / th.min_total_mpx_per_s}
    absolute = {"gpu_s": th.max_gpu_s, "cpu_s": th.max_cpu_s, "total_s": th.max_total_s}
    return {k: min(v + th.timing_overhead_s, absolute[k] or float("inf"))
            for k, v in limits.items()}


def _timing_check(timings: Mapping[str, float], th: QCThresholds,
                  output_px: int) -> CheckResult:
    limits = timing_limits(output_px, th)
    text = ", ".join(f"{k} <= {v:.0f}" for k, v in limits.items())
    measured = {k: v for k, v in timings.items() if k in limits}
    if not measured:
        return CheckResult("timing", "warn", None, text, "no timings given")
    over = [k for k, v in measured.items() if v > limits[k]]
    return _result("timing", not over, measured, text, f"over: {over}" if over else "")


def deploy_limit_bytes(width: int, height: int, count: int, itemsize: int,
                       th: QCThresholds, overviews: int = 0) -> float:
    """Return the largest acceptable file size: a share of the raw pixels, and the cap.

    The raw size counts the full resolution and the ``overviews`` levels (halvings).
    """
    pixels = sum(math.ceil(width / 2**k) * math.ceil(height / 2**k)
                 for k in range(overviews + 1))
    limit = th.max_size_ratio * pixels * count * itemsize
    return min(limit, th.max_file_bytes) if th.max_file_bytes else limit


def _deploy_check(path: Path, compression: str | None, area_ha: float,
                  timings: Mapping[str, float], th: QCThresholds,
                  limit: float) -> CheckResult:
    """Size under the limit, compressed, a valid COG, made fast enough."""
    size = path.stat().st_size
    valid_cog, errors, _ = cog_validate(str(path), quiet=True)
    problems = []
    if size >= limit:
        problems.append("too large")
    if not compression or compression.upper() == "NONE":
        problems.append("uncompressed")
    if not valid_cog:
        problems.append(f"invalid COG: {errors}")
    value: dict[str, Any] = {"bytes": size, "compression": compression, "valid_cog": valid_cog}
    status: Status = "fail" if problems else "pass"
    if timings.get("total_s", 0) > 0:
        rate = area_ha / (timings["total_s"] / 60.0)
        value["ha_per_min"] = rate
        if rate < th.min_throughput_ha_per_min:
            problems.append("throughput too low")
            status = "fail"
    elif not problems:
        status = "warn"
        problems.append("throughput not measured (no total_s)")
    return CheckResult("deploy", status, value,
                       f"< {limit:.3g} B, compressed, valid COG, "
                       f">= {th.min_throughput_ha_per_min} ha/min", "; ".join(problems))


def product_source(source: str, cog_path: str | os.PathLike) -> Any:
    """Open the input scene of a product, cropped to it, for the ``consistency`` check.

    Parameters
    ----------
    source : str
        A bundled sample (``29RKH``, ``bigearthnet``), or a STAC Item (a JSON file or URL)
        of the scene the product was made from.
    cog_path : path
        The product; the scene is cropped to its bounds (lazily).

    Raises
    ------
    InputError
        The source cannot be opened, or does not cover the product.
    """
    from ..scene.sample import SAMPLES, sample_scene

    if source in SAMPLES:
        ds = sample_scene(source)
    else:
        import pystac

        from ..scene.sources import load_items

        try:
            item = pystac.Item.from_file(source)
        except Exception as err:
            raise InputError(f"--source {source!r} is neither a bundled sample "
                             f"({', '.join(sorted(SAMPLES))}) nor a readable STAC Item "
                             f"({type(err).__name__}: {err})") from None
        ds = load_items([item])
    with rasterio.open(cog_path) as src:
        left, bottom, right, top = src.bounds
        crs = src.crs
    if ds.rio.crs != crs:
        raise InputError(f"--source {source!r} is in {ds.rio.crs}, the product in {crs}: give "
                         "the scene the product was made from")
    crop = ds.sel(x=slice(left, right), y=slice(top, bottom))
    if crop.sizes["x"] == 0 or crop.sizes["y"] == 0:
        raise InputError(f"--source {source!r} does not cover the product's bounds "
                         f"{(left, bottom, right, top)}: give the scene it was made from")
    return crop


def resolve_thresholds(thresholds: QCThresholds | Mapping[str, Any] | None) -> QCThresholds:
    """Return the thresholds to use: given ones, else overrides of the settings' ones.

    The settings' thresholds are the defaults unless ``SRLIB_QC_THRESHOLDS`` names a file
    of overrides (see :class:`srlib.config.Settings`).
    """
    if isinstance(thresholds, QCThresholds):
        return thresholds
    base = Settings.from_env().qc_thresholds
    return QCThresholds.from_mapping(thresholds, base) if thresholds else base


def _block_mean(data: np.ndarray, valid: np.ndarray, block: int) -> np.ndarray:
    """Mean of the valid values of each ``block x block`` block (NaN where none)."""
    h, w = (data.shape[0] // block) * block, (data.shape[1] // block) * block
    vals = np.where(valid, data, 0.0)[:h, :w].reshape(h // block, block, w // block, block)
    counts = valid[:h, :w].reshape(h // block, block, w // block, block).sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, vals.sum(axis=(1, 3)) / np.maximum(counts, 1), np.nan)


def _worst_window(mean: np.ndarray, ref: np.ndarray, cells: int
                  ) -> tuple[float, tuple[int, int]] | None:
    """Find the window of ``cells x cells`` grid cells whose product differs most.

    Per window with at least a quarter of its cells valid in both, the error is the mean
    absolute difference over the mean input level plus 100 (so that dark water, near 0,
    cannot divide by nothing). Returns the largest error and its window's first cell, or
    None where no window has enough cells.
    """
    both = np.isfinite(mean) & np.isfinite(ref)
    h, w = -(-mean.shape[0] // cells) * cells, -(-mean.shape[1] // cells) * cells

    def windows(a: np.ndarray) -> np.ndarray:
        padded = np.zeros((h, w))
        padded[: a.shape[0], : a.shape[1]] = a
        return padded.reshape(h // cells, cells, w // cells, cells).sum(axis=(1, 3))

    count = windows(both)
    diff = windows(np.where(both, np.abs(mean - ref), 0.0))
    level = windows(np.where(both, np.abs(ref), 0.0))
    enough = count >= max(1, cells * cells // 4)
    if not enough.any():
        return None
    with np.errstate(invalid="ignore", divide="ignore"):
        error = np.where(enough, (diff / count) / (level / count + 100.0), -1.0)
    iy, ix = np.unravel_index(int(np.argmax(error)), error.shape)
    return float(error[iy, ix]), (int(iy) * cells, int(ix) * cells)


def _neighbour_mad(ref: np.ndarray) -> float:
    """Mean absolute difference between neighbouring valid pixels (across and down)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no valid pair
        across = np.nanmean(np.abs(np.diff(ref, axis=1))) if ref.shape[1] > 1 else np.nan
        down = np.nanmean(np.abs(np.diff(ref, axis=0))) if ref.shape[0] > 1 else np.nan
    values = [float(v) for v in (across, down) if np.isfinite(v)]
    return sum(values) / len(values) if values else 0.0


def _grid_mismatch(src: rasterio.DatasetReader, source: Any) -> str | None:
    """Say how the product's grid departs from its input's, or None where it does not.

    The product must lie on its input's grid: the same CRS, the same origin (within a
    hundredth of an output pixel) and a resolution an integer fraction of the input's.
    Values are compared pixel by pixel, so a product whose georeferencing is off would
    otherwise pass with the right values in the wrong place.
    """
    crs = source.rio.crs
    if crs is not None and src.crs is not None and crs != src.crs:
        return f"the product is in {src.crs}, its input in {crs}"
    grid = source.rio.transform()
    own = src.transform
    tol = abs(own.a) / 100
    dx, dy = own.c - grid.c, own.f - grid.f
    if abs(dx) > tol or abs(dy) > tol:
        return (f"the product's grid is {dx:g}, {dy:g} (x, y) from its input's origin: its "
                "georeferencing is wrong, or give the scene it was made from")
    for name, mine, theirs in (("x", own.a, grid.a), ("y", own.e, grid.e)):
        ratio = theirs / mine if mine else 0.0
        if ratio < 1 - 1e-9 or abs(ratio - round(ratio)) > 1e-6:
            return (f"the product's {name} resolution {mine:g} is not an integer fraction of "
                    f"its input's {theirs:g}")
    return None


def consistency(cog_path: str | os.PathLike, source: Any | None, *,
                thresholds: QCThresholds | Mapping[str, Any] | None = None) -> CheckResult:
    """Compare the product, averaged back onto the input grid, with the input reflectance.

    A super-resolved product must keep the radiometry of its input: each output band,
    averaged over the ``scale x scale`` output pixels of an input pixel, should be close
    to the input band there (Wald's consistency property). Per band, over pixels valid in
    both: the bias (mean difference) and the mean absolute difference, in reflectance x
    10000. Thresholds (:data:`DEFAULT_THRESHOLDS`): ``|bias| <= max_consistency_bias``
    (100, i.e. 0.01 reflectance), ``mad <= max_consistency_mad`` (200) and
    ``mad_ratio <= max_band_mad_ratio`` (0.5): the band's MAD over its MAD against the
    closest *other* input band, so a band must match its own input at least twice as
    well as any other (swapped bands fail even where bands differ little); and
    ``shift_ratio <= max_band_shift_ratio`` (0.5): the band's MAD over the MAD between
    neighbouring pixels of its input, the difference a band moved by one pixel makes,
    so a misregistered band, or one with noise of the input's own contrast, fails where
    the bands are alike (MADs under ``min_shift_mad``, 20, pass: in flat water or snow a
    pixel's move changes nothing). And locally,
    so that a defect in one place is not averaged away over a whole tile (a lost or
    zeroed COG tile is 1/46,000 of a full tile's band): in every window of half a COG
    tile (or one grid cell, if larger), the mean absolute difference over the input's
    mean level there plus 100 must stay within ``max_local_consistency_error`` (0.5; a
    zeroed window gives its level / (level + 100), 0.67 to 0.99 for levels 200 to
    10000). Bicubic passes with a few units, ratios under 0.03 and local errors under
    0.05; a model run with wrong normalisation statistics fails with biases in the
    thousands. The product must lie on its input's grid (CRS, origin, an integer scale),
    or it fails before any value is compared. Large scenes are compared on a grid
    coarsened by a power of two (``consistency_pixels`` input pixels at most), read from
    the product's overviews.
    """
    th = resolve_thresholds(thresholds)
    limit = (f"per band: |bias| <= {th['max_consistency_bias']:g}, mad <= "
             f"{th['max_consistency_mad']:g}, mad <= {th['max_band_mad_ratio']:g} x the mad "
             f"against any other input band and <= {th['max_band_shift_ratio']:g} x its "
             f"input's between neighbouring pixels (or <= {th['min_shift_mad']:g}); in "
             "every window of half a tile, mad <= "
             f"{th['max_local_consistency_error']:g} x (input level + 100)")
    if source is None:
        return CheckResult("consistency", "warn", "not checked", limit,
                           "not checked: no source given (srlib qc --source)")
    from ..engine.superres import input_reflectance

    with rasterio.open(cog_path) as src:
        names = [d or "" for d in src.descriptions]
        bands = [b for b in names if b in ("red", "green", "blue", "nir")]
        try:
            inputs = input_reflectance(source, tuple(bands))
        except InputError as err:
            return CheckResult("consistency", "warn", None, limit, f"input unusable: {err}")
        ny, nx = inputs[0].shape
        scale = max(1, round(abs(source.rio.resolution()[0]) / abs(src.res[0])))
        off_grid = _grid_mismatch(src, source)
        if off_grid:
            return _result("consistency", False, {"grid": off_grid}, limit, off_grid)
        s = 1
        while (ny // s) * (nx // s) > th["consistency_pixels"]:
            s *= 2
        factors = [1, *src.overviews(1)]
        f = max(k for k in factors if k <= 2 * s and (scale * s) % k == 0)
        block = scale * s // f
        sy, sx = ny // s, nx // s
        level = factors.index(f)
        nodata = src.nodata if src.nodata is not None else OUTPUT_NODATA
        reader = rasterio.open(cog_path, overview_level=level - 1) if level else None
        try:
            handle = reader or src
            window = ((0, min(handle.height, sy * block)), (0, min(handle.width, sx * block)))
            out = handle.read([names.index(b) + 1 for b in bands], window=window)
        finally:
            if reader is not None:
                reader.close()
    import dask.array as da

    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks
        coarse = [da.coarsen(np.nanmean, b[: sy * s, : sx * s], {0: s, 1: s}) if s > 1
                  else b[:sy, :sx] for b in inputs]
        ref = np.stack(da.compute(*coarse))
    value: dict[str, Any] = {}
    bad: list[str] = []
    places: list[str] = []
    cell_px = scale * s  # output pixels of a grid cell, per side
    cells = max(1, th["tile_size"] // 2 // cell_px)  # grid cells per side of a window
    means = [_block_mean(o.astype(np.float64), o != nodata, block) for o in out]
    refs = [r[: means[0].shape[0], : means[0].shape[1]].astype(np.float64) for r in ref]
    for i, band in enumerate(bands):
        mean = means[i]
        both = np.isfinite(mean) & np.isfinite(refs[i])
        if not both.any():
            continue
        diff = mean[both] - refs[i][both]
        bias, mad = float(diff.mean()), float(np.abs(diff).mean())
        # the band must look like its own input more than like any other input band
        others = [float(np.nanmean(np.abs(mean[both] - r[both])))
                  for j, r in enumerate(refs) if j != i]
        ratio = mad / max(min(others), 1e-9) if others else 0.0
        # and more than its input looks like itself moved by one pixel
        shift = mad / max(_neighbour_mad(refs[i]), 1e-9)
        value[band] = {"bias": round(bias, 2), "mad": round(mad, 2),
                       "mad_ratio": round(ratio, 3), "shift_ratio": round(shift, 3)}
        worst = _worst_window(mean, refs[i], cells)
        local_bad = False
        if worst is not None:
            error, (cy, cx) = worst
            rows, cols = (cy * cell_px, (cy + cells) * cell_px), (cx * cell_px,
                                                                  (cx + cells) * cell_px)
            value[band].update(local_error=round(error, 3), local_rows=rows, local_cols=cols)
            if error > th["max_local_consistency_error"]:
                local_bad = True
                places.append(f"{band} at rows {rows[0]}-{rows[1]}, cols {cols[0]}-{cols[1]} "
                              f"(local error {error:.2f})")
        if abs(bias) > th["max_consistency_bias"] or mad > th["max_consistency_mad"] \
                or ratio > th["max_band_mad_ratio"] or local_bad \
                or (shift > th["max_band_shift_ratio"] and mad > th["min_shift_mad"]):
            bad.append(band)
    if not value:
        return CheckResult("consistency", "warn", None, limit, "no pixel valid in both")
    note = f"off: {bad}" if bad else ""
    if places:
        note += "; differs from its input in one place: " + "; ".join(places)
    return _result("consistency", not bad, value, limit, note)
