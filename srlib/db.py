"""Metadata database: runs and pending AOI requests (SQLAlchemy Core).

One code path for SQLite and PostgreSQL. The default is an SQLite file; ``PG_URL`` (``postgresql+psycopg://user:pass@host/db``)
selects PostgreSQL. Workers claim pending requests safely: PostgreSQL uses
``SELECT ... FOR UPDATE SKIP LOCKED``, SQLite a write-locked (``BEGIN IMMEDIATE``)
transaction, so no request is claimed twice. A request is marked ``done`` only by
:meth:`MetadataDB.complete_request`, which the job calls after publishing succeeded.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from typing import Any

import sqlalchemy as sa

from .errors import InputError

__all__ = ["MetadataDB", "default_url"]

_meta = sa.MetaData()

runs = sa.Table(
    "srlib_runs", _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("started", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished", sa.DateTime(timezone=True)),
    sa.Column("status", sa.String(16), nullable=False),  # running, done, failed, skipped
    sa.Column("inputs", sa.Text, nullable=False),  # JSON: date, mgrs/aoi, items
    sa.Column("model", sa.String(200)),
    sa.Column("versions", sa.Text),  # JSON: srlib, torch, gdal
    sa.Column("timings", sa.Text),  # JSON
    sa.Column("qc_passed", sa.Boolean),
    sa.Column("qc", sa.Text),  # JSON report
    sa.Column("outputs", sa.Text),  # JSON list of URIs
    sa.Column("error", sa.Text),
)

requests = sa.Table(
    "srlib_requests", _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    sa.Column("date", sa.String(8), nullable=False),
    sa.Column("aoi", sa.Text, nullable=False),  # JSON [min_lon, min_lat, max_lon, max_lat]
    sa.Column("status", sa.String(16), nullable=False, index=True),  # pending claimed done failed
    sa.Column("worker", sa.String(200)),
    sa.Column("claimed_at", sa.DateTime(timezone=True)),
    sa.Column("run_id", sa.Integer),
    sa.Column("error", sa.Text),
)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def default_url() -> str:
    """``PG_URL`` if set, else an SQLite file ``srlib.sqlite`` in the working directory."""
    return os.environ.get("PG_URL") or "sqlite:///srlib.sqlite"


class MetadataDB:
    """Runs and requests in one database (see the module docstring).

    Parameters
    ----------
    url : str, optional
        SQLAlchemy URL; default :func:`default_url`. Never logged (it may hold a password).
    """

    def __init__(self, url: str | None = None) -> None:
        url = url or default_url()
        try:
            self.engine = sa.create_engine(url, future=True)
        except Exception as err:
            raise InputError(f"bad database URL ({type(err).__name__}); expected "
                             "sqlite:///path or postgresql+psycopg://user:pass@host/db") from err
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        if self.is_sqlite:
            @sa.event.listens_for(self.engine, "connect")
            def _sqlite_manual(dbapi_conn: Any, _rec: Any) -> None:
                dbapi_conn.isolation_level = None  # we issue BEGIN ourselves

            @sa.event.listens_for(self.engine, "begin")
            def _sqlite_begin(conn: Any) -> None:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
        _meta.create_all(self.engine)

    def __repr__(self) -> str:
        return f"MetadataDB({self.engine.dialect.name})"

    # -- runs
    def start_run(self, inputs: dict[str, Any], *, model: str = "",
                  versions: dict[str, str] | None = None) -> int:
        """Record a run as ``running``; return its id."""
        with self.engine.begin() as conn:
            result = conn.execute(runs.insert().values(
                started=_now(), status="running", inputs=json.dumps(inputs, default=str),
                model=model, versions=json.dumps(versions or {})))
            return int(result.inserted_primary_key[0])

    def finish_run(self, run_id: int, status: str, *, timings: dict | None = None,
                   qc: dict | None = None, outputs: list[str] | None = None,
                   error: str | None = None) -> None:
        """Record the end of a run (``done``, ``failed`` or ``skipped``)."""
        with self.engine.begin() as conn:
            conn.execute(runs.update().where(runs.c.id == run_id).values(
                finished=_now(), status=status, timings=json.dumps(timings or {}),
                qc_passed=None if qc is None else bool(qc.get("passed")),
                qc=json.dumps(qc, default=str) if qc is not None else None,
                outputs=json.dumps(outputs or []), error=error))

    def run(self, run_id: int) -> dict[str, Any]:
        """One run as a dict."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.id == run_id)).mappings().one()
            return dict(row)

    # -- requests
    def add_request(self, date: str, aoi: list[float] | tuple[float, ...]) -> int:
        """Queue a pending AOI request; return its id."""
        with self.engine.begin() as conn:
            result = conn.execute(requests.insert().values(
                created=_now(), date=str(date), aoi=json.dumps(list(aoi)), status="pending"))
            return int(result.inserted_primary_key[0])

    def claim_request(self, worker: str) -> dict[str, Any] | None:
        """Atomically claim the oldest pending request for ``worker`` (None if none)."""
        query = (sa.select(requests).where(requests.c.status == "pending")
                 .order_by(requests.c.id).limit(1))
        if not self.is_sqlite:
            query = query.with_for_update(skip_locked=True)
        with self.engine.begin() as conn:
            row = conn.execute(query).mappings().first()
            if row is None:
                return None
            conn.execute(requests.update().where(requests.c.id == row["id"]).values(
                status="claimed", worker=worker, claimed_at=_now()))
        claimed = dict(row)
        claimed.update(status="claimed", worker=worker, aoi=json.loads(row["aoi"]))
        return claimed

    def complete_request(self, request_id: int, run_id: int | None) -> None:
        """Mark a request done (call only after publishing succeeded)."""
        self._set(request_id, status="done", run_id=run_id, error=None)

    def fail_request(self, request_id: int, error: str, run_id: int | None = None) -> None:
        """Mark a request failed with its error."""
        self._set(request_id, status="failed", run_id=run_id, error=error)

    def request(self, request_id: int) -> dict[str, Any]:
        """One request as a dict."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(requests).where(requests.c.id == request_id))
            return dict(row.mappings().one())

    def _set(self, request_id: int, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(requests.update().where(requests.c.id == request_id).values(**values))
