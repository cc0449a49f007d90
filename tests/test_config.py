"""Settings are read from the environment in one place, validated, and never print secrets."""

from __future__ import annotations

import json

import pytest

import srlib
from srlib.config import QCThresholds, Settings, secret_values


def test_settings_from_env_one_endpoint_and_the_old_one_with_a_warning(tmp_path):
    s = Settings.from_env({"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9000",
                           "PG_URL": "postgresql+psycopg://u:pw@db/x", "AWS_MAX_ATTEMPTS": "3"})
    assert (s.s3_host, s.s3_https, s.s3_max_attempts) == ("127.0.0.1:9000", False, 3)
    assert "pw" not in repr(s)  # the database URL may hold a password
    with pytest.warns(DeprecationWarning, match="AWS_ENDPOINT_URL_S3"):
        old = Settings.from_env({"AWS_S3_ENDPOINT": "127.0.0.1:9000", "AWS_HTTPS": "NO"})
    assert old.s3_endpoint_url == "http://127.0.0.1:9000"
    assert Settings.from_env({}).s3_endpoint_url is None and Settings.from_env({}).s3_https
    for bad in ({"AWS_ENDPOINT_URL_S3": "127.0.0.1:9000"}, {"AWS_MAX_ATTEMPTS": "many"}):
        with pytest.raises(srlib.InputError):
            Settings.from_env(bad)
    assert secret_values({"AWS_SECRET_ACCESS_KEY": "abcdef", "PGPASSWORD": "x"}) == \
        {"AWS_SECRET_ACCESS_KEY": "abcdef"}


def test_qc_thresholds_are_typed_validated_and_come_from_one_file(tmp_path, monkeypatch):
    th = QCThresholds.from_mapping({"max_file_bytes": 8e10, "mean_range": [2, 9000]})
    assert th.max_file_bytes == 8e10 and th.mean_range == (2.0, 9000.0)
    for bad in ({"max_file_bytes": "big"}, {"mean_range": [9, 1]}, {"max_cpu_s": -1},
                {"tile": 256}):
        with pytest.raises(srlib.InputError, match="QC threshold"):
            QCThresholds.from_mapping(bad)
    path = tmp_path / "qc.json"
    path.write_text(json.dumps({"min_overviews": 9}))
    monkeypatch.setenv("SRLIB_QC_THRESHOLDS", str(path))
    assert Settings.from_env().qc_thresholds.min_overviews == 9
    path.write_text("{not json")
    with pytest.raises(srlib.InputError, match="SRLIB_QC_THRESHOLDS"):
        Settings.from_env()


def test_srlib_qc_honours_the_settings_thresholds_and_records_them(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from srlib.cli import main

    from .conftest import synthetic_scene

    cog = tmp_path / "p.tif"
    srlib.super_resolve_to_cog(synthetic_scene((64, 64)), cog)
    assert CliRunner().invoke(main, ["qc", str(cog)]).exit_code == 0
    path = tmp_path / "qc.json"
    path.write_text(json.dumps({"max_file_bytes": 1000}))
    monkeypatch.setenv("SRLIB_QC_THRESHOLDS", str(path))
    result = CliRunner().invoke(main, ["qc", str(cog), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["failed"] == ["deploy"] and report["thresholds"]["max_file_bytes"] == 1000


def test_qc_limits_scale_with_the_product_and_a_full_tile_passes():
    from srlib.product.qc import deploy_limit_bytes, timing_limits

    th = QCThresholds()
    # measured (FIELD-NOTES): a quarter tile, 54900^2 x 5 int16, compressed to 15.6 GB;
    # a full tile is about four times that
    for side, size in ((54900, 15.6e9), (109800, 62.4e9)):
        assert size < deploy_limit_bytes(side, side, 5, 2, th, overviews=7)  # defaults pass
    legacy = QCThresholds.from_mapping({"max_file_bytes": 10e9})  # a deployment's cap
    assert deploy_limit_bytes(54900, 54900, 5, 2, legacy) == 10e9
    assert deploy_limit_bytes(1024, 1024, 5, 2, th) == 1024 * 1024 * 10  # raw size
    full = timing_limits(109800 * 109800, th)
    assert full["gpu_s"] > 2 * 3600  # a full tile's 1-2 h of GPU inference passes
    small = timing_limits(1024 * 1024, th)
    assert small["gpu_s"] < 3600 and small["total_s"] < full["total_s"]
    capped = timing_limits(109800 * 109800,
                           QCThresholds.from_mapping({"max_gpu_s": 7200, "max_cpu_s": None}))
    assert capped["gpu_s"] == 7200  # the legacy's absolute limit, as an option
