"""Metadata database: runs and pending AOI requests (SQLAlchemy Core).

One code path for SQLite and PostgreSQL. The default is an SQLite file; ``PG_URL`` (``postgresql+psycopg://user:pass@host/db``)
selects PostgreSQL. Workers claim pending requests safely: PostgreSQL uses
``SELECT ... FOR UPDATE SKIP LOCKED``, SQLite a write-locked (``BEGIN IMMEDIATE``)
transaction, so no request is claimed twice. A claim is a lease (``lease_until``) that its
worker renews while it works (:meth:`MetadataDB.lease`); a claim whose lease has expired
(the worker died) is claimed again by another worker and its run marked ``abandoned``.
A request is marked ``done`` only by :meth:`MetadataDB.complete_request`, which the job
calls after publishing succeeded, with the URIs of its own product.

Request states: ``pending`` -> ``claimed`` -> ``done`` | ``partial`` (delivered, but its
data cover less of the AOI than the minimum) | ``failed`` (a permanent cause, or its
attempts spent) | ``invalid`` (the row cannot be parsed; quarantined once, with the
reason). A transient failure (a signal, the database, the network, S3, a full disk) puts
the request back to ``pending`` (:meth:`MetadataDB.release_request`) with its attempt
count and a backoff (``not_before``); :meth:`MetadataDB.requeue` (``srlib requeue``)
puts requests back by id or state.

Every time that decides a lease (claiming, renewing, expiring, backoff) is the
database's clock, read inside the transaction (PostgreSQL ``now()``, SQLite's own
clock), never the worker's: a worker whose clock runs ahead cannot take over live leases.

Connections are checked before use (pool pre-ping) and have timeouts (connect, statement,
lock); a statement that fails because the connection dropped (a database restart) is
retried for up to ``retry_s`` seconds. Every write is an idempotent update keyed by the
request id and the worker, so a retried write changes nothing twice.

A database that cannot be reached raises :class:`DatabaseError` with one line (the URL's
password never appears, whatever characters it holds).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
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
    sa.Column("status", sa.String(16), nullable=False, index=True),  # see REQUEST_STATES
    sa.Column("worker", sa.String(200)),
    sa.Column("claimed_at", sa.DateTime(timezone=True)),
    sa.Column("run_id", sa.Integer),
    sa.Column("error", sa.Text),
    sa.Column("lease_until", sa.DateTime(timezone=True)),
    sa.Column("outputs", sa.Text),  # JSON list of the product's URIs
    sa.Column("attempts", sa.Integer),  # claims so far (a SIGTERM'd attempt is not counted)
    sa.Column("not_before", sa.DateTime(timezone=True)),  # backoff after a transient failure
    sa.Column("coverage", sa.Float),  # fraction of the AOI covered by valid data
)

#: Request states (see the module docstring).
REQUEST_STATES = ("pending", "claimed", "done", "partial", "failed", "invalid")


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

    def claim_request(self, worker: str, *, lease_s: float = 600.0,
                      max_attempts: int = 3) -> dict[str, Any] | None:
        """Claim the oldest claimable request, or None."""

    def lease(self, request_id: int, worker: str,
              lease_s: float) -> contextlib.AbstractContextManager[_Lease]:
        """Renew the claim while the block runs."""

    def complete_request(self, request_id: int, run_id: int | None, *,
                         outputs: list[str] | None = None, worker: str | None = None,
                         status: str = "done", coverage: float | None = None,
                         reason: str | None = None) -> None:
        """Mark a request delivered (``done`` or ``partial``) with its product's URIs."""

    def fail_request(self, request_id: int, error: str, run_id: int | None = None, *,
                     worker: str | None = None) -> None:
        """Mark a request failed for good with its error."""

    def release_request(self, request_id: int, worker: str, error: str, *,
                        backoff_s: float = 60.0, max_attempts: int = 3,
                        count: bool = True) -> str:
        """Put a claimed request back to pending (or failed when its attempts are spent)."""


def _new_id(result: Any) -> int:
    """Return the id of the row an ``INSERT`` made."""
    key = result.inserted_primary_key
    if key is None:
        raise DatabaseError("the database returned no id for the new row")
    return int(key[0])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def default_url() -> str:
    """``PG_URL`` if set, else an SQLite file ``srlib.sqlite`` in the working directory."""
    return Settings.from_env().database_url


def normalise_url(url: str) -> str:
    """Percent-encode the user and password of a database URL; register them as secrets.

    A password holding ``@``, ``:``, ``/`` or ``#`` unencoded is split wrongly by URL
    parsers (part of it then becomes the host and appears in error messages); here the
    userinfo runs to the last ``@``, so such a password works and is never shown.
    """
    from .notify import register_secret

    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    at = rest.rfind("@")
    if at < 0:
        return url
    userinfo, host = rest[:at], rest[at + 1:]
    if "/" in userinfo and ":" not in userinfo:
        return url  # an '@' in the path, not credentials
    user, colon, password = userinfo.partition(":")
    raw_user, raw_password = urllib.parse.unquote(user), urllib.parse.unquote(password)
    for value in (password, raw_password):
        register_secret(value)
    quoted = urllib.parse.quote(raw_user, safe="")
    if colon:
        quoted += ":" + urllib.parse.quote(raw_password, safe="")
    return f"{scheme}://{quoted}@{host}"


#: Errors of a connection that went away (a database restart): retried.
def _disconnected(err: BaseException) -> bool:
    if isinstance(err, sa.exc.DBAPIError) and err.connection_invalidated:
        return True
    return isinstance(err, sa.exc.OperationalError | sa.exc.InterfaceError)


def parse_request(row: dict[str, Any]) -> dict[str, Any]:
    """Return a request row's date and AOI, validated.

    Raises
    ------
    InputError
        The row cannot be made (not JSON, not four numbers, not a date); the message says
        what is wrong and how to fix it.
    """
    from ..scene.sources import check_aoi, parse_date

    try:
        aoi = json.loads(row["aoi"]) if isinstance(row["aoi"], str) else row["aoi"]
    except (TypeError, ValueError) as err:
        raise InputError(f"aoi {str(row['aoi'])[:80]!r} is not JSON ({err}); write it as "
                         "[min_lon, min_lat, max_lon, max_lat]") from None
    if not isinstance(aoi, list) or len(aoi) != 4 or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in aoi):
        raise InputError(f"aoi {str(row['aoi'])[:80]!r} is not four numbers; write it as "
                         "[min_lon, min_lat, max_lon, max_lat]")
    check_aoi(aoi)
    day = parse_date(str(row["date"]))
    return {"date": f"{day:%Y%m%d}", "aoi": [float(v) for v in aoi]}


class MetadataDB:
    """Runs and requests in one database (see the module docstring).

    Parameters
    ----------
    url : str, optional
        SQLAlchemy URL; default :func:`default_url`. Never logged (it may hold a password).
    timeout_s : float
        Connect timeout, and the limit of one statement (PostgreSQL ``statement_timeout``)
        or of waiting for SQLite's write lock.
    retry_s : float
        How long a statement whose connection dropped is retried (a database restart).
    """

    def __init__(self, url: str | None = None, *, timeout_s: float = 30.0,
                 retry_s: float = 120.0) -> None:
        url = normalise_url(url or default_url())
        self.retry_s = retry_s
        try:
            dialect = sa.engine.make_url(url).get_backend_name()
            connect_args: dict[str, Any] = {"timeout": timeout_s} if dialect == "sqlite" else {
                "connect_timeout": max(1, int(timeout_s)),
                "options": f"-c statement_timeout={int(timeout_s * 1000)} "
                           f"-c lock_timeout={int(timeout_s * 1000)}"}
            self.engine = sa.create_engine(url, future=True, pool_pre_ping=True,
                                           connect_args=connect_args)
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
        def _create() -> None:
            _meta.create_all(self.engine)
            self._add_missing_columns()

        self._db_call("create the tables", _create, retry=False)

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

    def _db_call(self, what: str, func: Callable[[], Any], *, retry: bool = True) -> Any:
        deadline = time.monotonic() + (self.retry_s if retry else 0.0)
        delay = 0.5
        while True:
            try:
                return func()
            except sa.exc.SQLAlchemyError as err:
                if _disconnected(err) and time.monotonic() + delay < deadline:
                    log.warning("the metadata database could not %s (%s); retrying in "
                                "%.1f s", what, type(err).__name__, delay)
                    time.sleep(delay)
                    delay = min(delay * 2, 10.0)
                    continue
                from .notify import redact

                reason = str(getattr(err, "orig", None) or err).strip().splitlines()
                where = redact(self.engine.url.render_as_string(hide_password=False))
                raise DatabaseError(redact(
                    f"the metadata database ({where}) could not {what}: "
                    f"{type(err).__name__}: {reason[0] if reason else ''}; check that it is "
                    "running and the URL (--db or $PG_URL)")) from None

    def _db_now(self, conn: sa.Connection) -> dt.datetime:
        """Return the database's clock (never the worker's), as an aware UTC datetime."""
        if self.is_sqlite:
            text = conn.exec_driver_sql("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')").scalar()
            return dt.datetime.fromisoformat(str(text)).replace(tzinfo=dt.UTC)
        value = conn.execute(sa.text("SELECT now()")).scalar_one()
        return value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)

    def ping(self) -> None:
        """Raise :class:`DatabaseError` unless the database answers."""
        def _ping() -> None:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        self._db_call("answer", _ping, retry=False)

    def __repr__(self) -> str:
        return f"MetadataDB({self.engine.dialect.name})"

    # -- runs
    def start_run(self, inputs: dict[str, Any], *, model: str = "",
                  versions: dict[str, str] | None = None, request_id: int | None = None) -> int:
        """Record a run as ``running`` (serving ``request_id``, if any); return its id."""
        def _start() -> int:
            with self.engine.begin() as conn:
                result = conn.execute(runs.insert().values(
                    started=self._db_now(conn), status="running",
                    inputs=json.dumps(inputs, default=str), model=model,
                    versions=json.dumps(versions or {}), request_id=request_id))
                run_id = _new_id(result)
                if request_id is not None:
                    conn.execute(requests.update().where(requests.c.id == request_id)
                                 .values(run_id=run_id))
                return run_id
        return self._db_call("record a run", _start)

    def finish_run(self, run_id: int, status: str, *, timings: dict | None = None,
                   qc: dict | None = None, outputs: list[str] | None = None,
                   error: str | None = None) -> None:
        """Record the end of a run.

        ``status`` is ``done``, ``partial``, ``failed``, ``interrupted`` or ``skipped``.
        """
        def _finish() -> None:
            with self.engine.begin() as conn:
                conn.execute(runs.update().where(runs.c.id == run_id).values(
                    finished=self._db_now(conn), status=status,
                    timings=json.dumps(timings or {}),
                    qc_passed=None if qc is None else bool(qc.get("passed")),
                    qc=json.dumps(qc, default=str) if qc is not None else None,
                    outputs=json.dumps(outputs or []), error=error))
        self._db_call("record the end of a run", _finish)

    def run(self, run_id: int) -> dict[str, Any]:
        """One run as a dict."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.id == run_id)).mappings().one()
            return dict(row)

    def runs_of_job(self, job_id: str) -> list[dict[str, Any]]:
        """Return the runs of SLURM job ``job_id`` (their inputs record ``slurm_job``)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(runs).where(
                runs.c.inputs.like(f'%"slurm_job": "{job_id}"%')).order_by(runs.c.id))
            found = [dict(r) for r in rows.mappings()]
        return [r for r in found if json.loads(r["inputs"]).get("slurm_job") == str(job_id)]

    def add_usage(self, run_id: int, usage: dict[str, Any]) -> None:
        """Record a batch job's usage (``sacct``) with a run's timings, as ``slurm``."""
        with self.engine.begin() as conn:
            text = conn.execute(sa.select(runs.c.timings).where(runs.c.id == run_id)).scalar()
            timings = json.loads(text) if text else {}
            timings["slurm"] = usage
            conn.execute(runs.update().where(runs.c.id == run_id).values(
                timings=json.dumps(timings)))

    # -- requests
    def add_request(self, date: str, aoi: list[float] | tuple[float, ...]) -> int:
        """Queue a pending AOI request (validated: a bad one is refused); return its id."""
        parsed = parse_request({"date": date, "aoi": json.dumps(list(aoi))})

        def _add() -> int:
            with self.engine.begin() as conn:
                result = conn.execute(requests.insert().values(
                    created=self._db_now(conn), date=parsed["date"],
                    aoi=json.dumps(parsed["aoi"]), status="pending", attempts=0))
                return _new_id(result)
        return self._db_call("add a request", _add)

    def claim_request(self, worker: str, *, lease_s: float = 600.0,
                      max_attempts: int = 3) -> dict[str, Any] | None:
        """Atomically claim the oldest claimable request for ``worker`` (None if none).

        Claimable: pending and past its backoff, or claimed by a worker whose lease
        expired (that worker's run is then marked ``abandoned``; after ``max_attempts``
        such claims the request ends ``failed``). A row that cannot be parsed is marked
        ``invalid`` with the reason and skipped. The claim holds a lease of ``lease_s``
        seconds on the database's clock.
        """
        def _claim() -> dict[str, Any] | None:
            with self.engine.begin() as conn:
                now = self._db_now(conn)
                expired = sa.and_(requests.c.status == "claimed", requests.c.lease_until < now)
                ready = sa.and_(requests.c.status == "pending", sa.or_(
                    requests.c.not_before.is_(None), requests.c.not_before <= now))
                query = (sa.select(requests).where(sa.or_(ready, expired))
                         .order_by(requests.c.id).limit(1))
                if not self.is_sqlite:
                    query = query.with_for_update(skip_locked=True)
                while True:
                    row = conn.execute(query).mappings().first()
                    if row is None:
                        return None
                    claimed = self._claim_row(conn, dict(row), worker, now, lease_s,
                                              max_attempts)
                    if claimed is not None:
                        return claimed
        return self._db_call("claim a request", _claim)

    def _claim_row(self, conn: sa.Connection, row: dict[str, Any], worker: str,
                   now: dt.datetime, lease_s: float,
                   max_attempts: int) -> dict[str, Any] | None:
        """Claim one selected row; None when it was quarantined or given up instead."""
        where = requests.c.id == row["id"]
        try:
            parsed = parse_request(row)
        except InputError as err:
            log.error("request %s is invalid and was quarantined: %s", row["id"], err)
            conn.execute(requests.update().where(where).values(
                status="invalid", error=f"invalid request: {err}", lease_until=None))
            return None
        attempts = int(row.get("attempts") or 0)
        if row["status"] == "claimed":
            log.warning("request %s: the lease of worker %s expired; reclaiming it",
                        row["id"], row["worker"])
            if row["run_id"] is not None:
                conn.execute(runs.update().where(
                    sa.and_(runs.c.id == row["run_id"], runs.c.status == "running"))
                    .values(status="abandoned", finished=now,
                            error=f"worker {row['worker']} stopped renewing its lease"))
            if attempts >= max_attempts:
                conn.execute(requests.update().where(where).values(
                    status="failed", lease_until=None,
                    error=f"gave up after {attempts} attempts: worker {row['worker']} "
                          "stopped renewing its lease (killed?); srlib requeue puts it back"))
                return None
        conn.execute(requests.update().where(where).values(
            status="claimed", worker=worker, claimed_at=now, run_id=None,
            attempts=attempts + 1, not_before=None,
            lease_until=now + dt.timedelta(seconds=lease_s)))
        row.update(status="claimed", worker=worker, attempts=attempts + 1, **parsed)
        return row

    def renew_lease(self, request_id: int, worker: str, lease_s: float) -> bool:
        """Extend ``worker``'s lease on a request; False when it is no longer its claim."""
        def _renew() -> bool:
            with self.engine.begin() as conn:
                result = conn.execute(requests.update().where(sa.and_(
                    requests.c.id == request_id, requests.c.worker == worker,
                    requests.c.status == "claimed")).values(
                    lease_until=self._db_now(conn) + dt.timedelta(seconds=lease_s)))
                return result.rowcount == 1
        return self._db_call("renew a lease", _renew, retry=False)

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
                         outputs: list[str] | None = None, worker: str | None = None,
                         status: str = "done", coverage: float | None = None,
                         reason: str | None = None) -> None:
        """Mark a request delivered with its product's URIs (only after publishing).

        ``status`` is ``done``, or ``partial`` when the data cover less of the AOI than
        the minimum (``reason`` says how much).

        Raises
        ------
        LeaseLost
            ``worker`` no longer holds the claim (its lease expired and another took it).
        """
        if status not in ("done", "partial"):
            raise InputError(f"a delivered request is done or partial, not {status!r}")
        self._set(request_id, worker, status=status, run_id=run_id, error=reason,
                  outputs=json.dumps(outputs or []), coverage=coverage, lease_until=None)

    def fail_request(self, request_id: int, error: str, run_id: int | None = None, *,
                     worker: str | None = None) -> None:
        """Mark a request failed for good with its error.

        Its run stays linked unless ``run_id`` is given.
        """
        values: dict[str, Any] = {"status": "failed", "error": error, "lease_until": None}
        if run_id is not None:
            values["run_id"] = run_id
        self._set(request_id, worker, **values)

    def release_request(self, request_id: int, worker: str, error: str, *,
                        backoff_s: float = 60.0, max_attempts: int = 3,
                        count: bool = True) -> str:
        """Put ``worker``'s claim back to ``pending`` after a transient failure.

        The next claim waits ``backoff_s * 2**(attempts - 1)`` seconds (database clock).
        When ``attempts`` reached ``max_attempts`` the request ends ``failed`` instead,
        with the reason. ``count=False`` (a stop signal) does not count the attempt.

        Returns
        -------
        str
            The new state, ``pending`` or ``failed``.

        Raises
        ------
        LeaseLost
            ``worker`` no longer holds the claim.
        """
        def _release() -> str | None:
            with self.engine.begin() as conn:
                where = sa.and_(requests.c.id == request_id, requests.c.worker == worker,
                                requests.c.status == "claimed")
                row = conn.execute(sa.select(requests.c.attempts).where(where)).first()
                if row is None:
                    return None
                attempts = int(row[0] or 0) - (0 if count else 1)
                if attempts >= max_attempts:
                    values: dict[str, Any] = {
                        "status": "failed", "attempts": attempts,
                        "error": f"gave up after {attempts} attempts; last: {error}"}
                else:
                    wait = backoff_s * 2 ** max(attempts - 1, 0) if count else 0.0
                    values = {"status": "pending", "attempts": max(attempts, 0),
                              "error": f"attempt {attempts} of {max_attempts}: {error}",
                              "not_before": self._db_now(conn) + dt.timedelta(seconds=wait)}
                conn.execute(requests.update().where(where).values(lease_until=None,
                                                                   **values))
                # a run the worker could not finish (stopped, or the database was down)
                conn.execute(runs.update().where(sa.and_(
                    runs.c.request_id == request_id, runs.c.status == "running")).values(
                    status="interrupted", finished=self._db_now(conn), error=error))
                return str(values["status"])
        state = self._db_call("release a request", _release)
        if state is None:
            raise LeaseLost(f"request {request_id} is no longer claimed by {worker}; "
                            "another worker holds it")
        return state

    def requeue(self, ids: list[int] | None = None, *,
                states: tuple[str, ...] | None = None) -> list[int]:
        """Put requests back to ``pending`` (attempts reset); return their ids.

        ``ids`` selects by id, ``states`` by state (``failed``, ``invalid``, ``partial``,
        ``done``, ``pending``). A request under a live claim is never taken from its
        worker: wait for the worker, or for its lease to expire.

        Raises
        ------
        InputError
            Neither ids nor states, an unknown state, ``claimed``, or an id that does not
            exist or is claimed.
        """
        if not ids and not states:
            raise InputError("name the requests to requeue: ids, or --state failed|invalid|"
                             "partial|done")
        bad = sorted(set(states or ()) - (set(REQUEST_STATES) - {"claimed"}))
        if bad:
            raise InputError(f"cannot requeue requests in state {bad}; give any of "
                             f"{[s for s in REQUEST_STATES if s != 'claimed']} (a claimed "
                             "request returns to pending when its lease expires)")

        def _requeue() -> list[int]:
            with self.engine.begin() as conn:
                where: sa.ColumnElement[bool] = sa.true()
                if ids:
                    found = dict(conn.execute(sa.select(requests.c.id, requests.c.status)
                                              .where(requests.c.id.in_(ids))).all())
                    missing = sorted(set(ids) - set(found))
                    claimed = sorted(i for i, st in found.items() if st == "claimed")
                    if missing or claimed:
                        raise InputError(
                            f"requests {missing} do not exist" if missing else
                            f"requests {claimed} are claimed by a worker; wait for it or "
                            "for its lease to expire")
                    where = requests.c.id.in_(ids)
                if states:
                    where = sa.and_(where, requests.c.status.in_(states))
                where = sa.and_(where, requests.c.status != "claimed")
                chosen = [r[0] for r in conn.execute(sa.select(requests.c.id).where(where))]
                if chosen:
                    conn.execute(requests.update().where(requests.c.id.in_(chosen)).values(
                        status="pending", attempts=0, not_before=None, worker=None,
                        lease_until=None, error=None))
                return sorted(chosen)
        return self._db_call("requeue requests", _requeue)

    def request(self, request_id: int) -> dict[str, Any]:
        """One request as a dict."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(requests).where(requests.c.id == request_id))
            return dict(row.mappings().one())

    def requests_in(self, *states: str) -> list[dict[str, Any]]:
        """Return the requests in any of ``states`` (all when none), by id."""
        query = sa.select(requests).order_by(requests.c.id)
        if states:
            query = query.where(requests.c.status.in_(states))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def _set(self, request_id: int, worker: str | None, **values: Any) -> None:
        def _update() -> int:
            where = requests.c.id == request_id
            if worker is not None:
                where = sa.and_(where, requests.c.worker == worker,
                                requests.c.status.in_(("claimed", values.get("status"))))
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
