"""Metadata database: runs and pending AOI requests (SQLAlchemy Core).

One code path for SQLite and PostgreSQL. The default is an SQLite file; ``PG_URL`` (``postgresql+psycopg://user:pass@host/db``)
selects PostgreSQL. Workers claim pending requests safely: PostgreSQL uses
``SELECT ... FOR UPDATE SKIP LOCKED``, SQLite a write-locked (``BEGIN IMMEDIATE``)
transaction, so no request is claimed twice. A claim is a lease (``lease_until``) that its
worker renews while it works (:meth:`MetadataDB.lease`); a claim whose lease has expired
(the worker died) is claimed again by another worker and its run marked ``abandoned``.
A request is marked ``done`` only by :meth:`MetadataDB.complete_request`, which the job
calls after publishing succeeded, with the URIs of its own product.

A database that cannot be reached raises :class:`DatabaseError` with one line (the URL's
password never appears).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any, Protocol

import sqlalchemy as sa

from ..config import Settings
from ..errors import InputError, SrlibError

__all__ = ["DatabaseError", "LeaseLost", "MetadataDB", "RequestQueue", "RunRecorder",
           "default_url"]

log = logging.getLogger("srlib")


class DatabaseError(SrlibError, OSError):
    """The metadata database cannot be reached or refused a statement."""


class LeaseLost(SrlibError):
    """The claim of this worker on a request expired and another worker took it over."""

_meta = sa.MetaData()

runs = sa.Table(
    "srlib_runs", _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("started", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished", sa.DateTime(timezone=True)),
    sa.Column("status", sa.String(16), nullable=False),  # running done failed skipped abandoned
    sa.Column("inputs", sa.Text, nullable=False),  # JSON: date, mgrs/aoi, items
    sa.Column("model", sa.String(200)),
    sa.Column("versions", sa.Text),  # JSON: srlib, torch, gdal
    sa.Column("timings", sa.Text),  # JSON
    sa.Column("qc_passed", sa.Boolean),
    sa.Column("qc", sa.Text),  # JSON report
    sa.Column("outputs", sa.Text),  # JSON list of URIs
    sa.Column("error", sa.Text),
    sa.Column("request_id", sa.Integer),
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
    sa.Column("lease_until", sa.DateTime(timezone=True)),
    sa.Column("outputs", sa.Text),  # JSON list of the product's URIs
)


class RunRecorder(Protocol):
    """Where jobs record their runs (:class:`MetadataDB`, or anything alike)."""

    def start_run(self, inputs: dict[str, Any], *, model: str = "",
                  versions: dict[str, str] | None = None, request_id: int | None = None) -> int:
        """Record a run as running; return its id."""

    def finish_run(self, run_id: int, status: str, *, timings: dict | None = None,
                   qc: dict | None = None, outputs: list[str] | None = None,
                   error: str | None = None) -> None:
        """Record the end of a run."""


class RequestQueue(RunRecorder, Protocol):
    """Where ``pdr`` workers claim AOI requests, under leases."""

    def ping(self) -> None:
        """Raise :class:`DatabaseError` unless the queue answers."""

    def claim_request(self, worker: str, *, lease_s: float = 600.0) -> dict[str, Any] | None:
        """Claim the oldest claimable request, or None."""

    def lease(self, request_id: int, worker: str,
              lease_s: float) -> contextlib.AbstractContextManager[_Lease]:
        """Renew the claim while the block runs."""

    def complete_request(self, request_id: int, run_id: int | None, *,
                         outputs: list[str] | None = None, worker: str | None = None) -> None:
        """Mark a request done with its product's URIs."""

    def fail_request(self, request_id: int, error: str, run_id: int | None = None, *,
                     worker: str | None = None) -> None:
        """Mark a request failed with its error."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def default_url() -> str:
    """``PG_URL`` if set, else an SQLite file ``srlib.sqlite`` in the working directory."""
    return Settings.from_env().database_url


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
        self._db_call("create the tables", lambda: (_meta.create_all(self.engine),
                                                    self._add_missing_columns()))

    def _add_missing_columns(self) -> None:
        """Add the columns of newer srlib versions to tables an older one created."""
        inspector = sa.inspect(self.engine)
        for table in (runs, requests):
            have = {c["name"] for c in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name not in have:
                    kind = column.type.compile(dialect=self.engine.dialect)
                    try:
                        with self.engine.begin() as conn:
                            conn.exec_driver_sql(
                                f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}")
                    except sa.exc.SQLAlchemyError:  # another worker added it meanwhile
                        names = {c["name"] for c in sa.inspect(self.engine).get_columns(
                            table.name)}
                        if column.name not in names:
                            raise

    def _db_call(self, what: str, func: Any) -> Any:
        try:
            return func()
        except sa.exc.SQLAlchemyError as err:
            reason = str(getattr(err, "orig", None) or err).strip().splitlines()
            raise DatabaseError(
                f"the metadata database ({self.engine.url.render_as_string(hide_password=True)})"
                f" could not {what}: {type(err).__name__}: {reason[0] if reason else ''}; "
                "check that it is running and the URL (--db or $PG_URL)") from None

    def ping(self) -> None:
        """Raise :class:`DatabaseError` unless the database answers."""
        def _ping() -> None:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        self._db_call("answer", _ping)

    def __repr__(self) -> str:
        return f"MetadataDB({self.engine.dialect.name})"

    # -- runs
    def start_run(self, inputs: dict[str, Any], *, model: str = "",
                  versions: dict[str, str] | None = None, request_id: int | None = None) -> int:
        """Record a run as ``running`` (serving ``request_id``, if any); return its id."""
        def _start() -> int:
            with self.engine.begin() as conn:
                result = conn.execute(runs.insert().values(
                    started=_now(), status="running", inputs=json.dumps(inputs, default=str),
                    model=model, versions=json.dumps(versions or {}), request_id=request_id))
                run_id = int(result.inserted_primary_key[0])
                if request_id is not None:
                    conn.execute(requests.update().where(requests.c.id == request_id)
                                 .values(run_id=run_id))
                return run_id
        return self._db_call("record a run", _start)

    def finish_run(self, run_id: int, status: str, *, timings: dict | None = None,
                   qc: dict | None = None, outputs: list[str] | None = None,
                   error: str | None = None) -> None:
        """Record the end of a run (``done``, ``failed`` or ``skipped``)."""
        def _finish() -> None:
            with self.engine.begin() as conn:
                conn.execute(runs.update().where(runs.c.id == run_id).values(
                    finished=_now(), status=status, timings=json.dumps(timings or {}),
                    qc_passed=None if qc is None else bool(qc.get("passed")),
                    qc=json.dumps(qc, default=str) if qc is not None else None,
                    outputs=json.dumps(outputs or []), error=error))
        self._db_call("record the end of a run", _finish)

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

    def claim_request(self, worker: str, *, lease_s: float = 600.0) -> dict[str, Any] | None:
        """Atomically claim the oldest claimable request for ``worker`` (None if none).

        Claimable: pending, or claimed by a worker whose lease expired (that worker's run
        is then marked ``abandoned``). The claim holds a lease of ``lease_s`` seconds.
        """
        def _claim() -> dict[str, Any] | None:
            now = _now()
            expired = sa.and_(requests.c.status == "claimed", requests.c.lease_until < now)
            query = (sa.select(requests)
                     .where(sa.or_(requests.c.status == "pending", expired))
                     .order_by(requests.c.id).limit(1))
            if not self.is_sqlite:
                query = query.with_for_update(skip_locked=True)
            with self.engine.begin() as conn:
                row = conn.execute(query).mappings().first()
                if row is None:
                    return None
                if row["status"] == "claimed":
                    log.warning("request %s: the lease of worker %s expired; reclaiming it",
                                row["id"], row["worker"])
                    if row["run_id"] is not None:
                        conn.execute(runs.update().where(
                            sa.and_(runs.c.id == row["run_id"], runs.c.status == "running"))
                            .values(status="abandoned", finished=now,
                                    error=f"worker {row['worker']} stopped renewing its lease"))
                conn.execute(requests.update().where(requests.c.id == row["id"]).values(
                    status="claimed", worker=worker, claimed_at=now, run_id=None,
                    lease_until=now + dt.timedelta(seconds=lease_s)))
            claimed = dict(row)
            claimed.update(status="claimed", worker=worker, aoi=json.loads(row["aoi"]))
            return claimed
        return self._db_call("claim a request", _claim)

    def renew_lease(self, request_id: int, worker: str, lease_s: float) -> bool:
        """Extend ``worker``'s lease on a request; False when it is no longer its claim."""
        def _renew() -> bool:
            with self.engine.begin() as conn:
                result = conn.execute(requests.update().where(sa.and_(
                    requests.c.id == request_id, requests.c.worker == worker,
                    requests.c.status == "claimed")).values(
                    lease_until=_now() + dt.timedelta(seconds=lease_s)))
                return result.rowcount == 1
        return self._db_call("renew a lease", _renew)

    @contextlib.contextmanager
    def lease(self, request_id: int, worker: str, lease_s: float) -> Iterator[_Lease]:
        """Renew ``worker``'s lease every ``lease_s / 3`` seconds while the block runs."""
        held = _Lease(self, request_id, worker, lease_s)
        held.start()
        try:
            yield held
        finally:
            held.stop()

    def complete_request(self, request_id: int, run_id: int | None, *,
                         outputs: list[str] | None = None, worker: str | None = None) -> None:
        """Mark a request done with its product's URIs (only after publishing succeeded).

        Raises
        ------
        LeaseLost
            ``worker`` no longer holds the claim (its lease expired and another took it).
        """
        self._set(request_id, worker, status="done", run_id=run_id, error=None,
                  outputs=json.dumps(outputs or []))

    def fail_request(self, request_id: int, error: str, run_id: int | None = None, *,
                     worker: str | None = None) -> None:
        """Mark a request failed with its error (its run stays linked unless ``run_id``)."""
        values: dict[str, Any] = {"status": "failed", "error": error}
        if run_id is not None:
            values["run_id"] = run_id
        self._set(request_id, worker, **values)

    def request(self, request_id: int) -> dict[str, Any]:
        """One request as a dict."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(requests).where(requests.c.id == request_id))
            return dict(row.mappings().one())

    def _set(self, request_id: int, worker: str | None, **values: Any) -> None:
        def _update() -> int:
            where = requests.c.id == request_id
            if worker is not None:
                where = sa.and_(where, requests.c.worker == worker,
                                requests.c.status == "claimed")
            with self.engine.begin() as conn:
                return conn.execute(requests.update().where(where).values(**values)).rowcount
        if self._db_call("update a request", _update) != 1:
            raise LeaseLost(f"request {request_id} is no longer claimed by {worker} (its lease "
                            "expired and another worker took it over); its result was not "
                            "recorded. Use a longer lease (--lease) if jobs outlive it")


class _Lease:
    """A thread that renews a claim's lease until stopped."""

    def __init__(self, db: MetadataDB, request_id: int, worker: str, lease_s: float) -> None:
        self.db, self.request_id, self.worker, self.lease_s = db, request_id, worker, lease_s
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"srlib-lease-{request_id}")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                if not self.db.renew_lease(self.request_id, self.worker, self.lease_s):
                    self.lost = "another worker took the request over"
                    return
            except DatabaseError as err:  # keep trying: the lease may still hold
                log.warning("request %s: could not renew the lease: %s", self.request_id, err)

    def check(self) -> None:
        """Raise :class:`LeaseLost` when the lease was lost while the job ran."""
        if self.lost:
            raise LeaseLost(f"request {self.request_id}: {self.lost}; the result of this "
                            "worker is not recorded")
