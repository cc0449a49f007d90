"""Failure notifications: a Slack-compatible incoming webhook, or the log (default).

Every failing step of a job calls the notifier with the step, the error and, when there
is one, the QC table; the error is always re-raised afterwards. Known secrets (AWS keys,
passwords in URLs, the webhook URL itself) are redacted from everything sent or logged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import urllib.request
from collections.abc import Iterator
from typing import Any, Protocol

from ..config import Settings, secret_values
from ..errors import step_of

__all__ = ["LogNotifier", "Notifier", "WebhookNotifier", "notifier_from_env", "redact",
           "register_secret", "step"]

log = logging.getLogger("srlib")

#: A URL: its scheme, then everything up to the next blank (the authority may hold
#: unencoded ``@``, ``:``, ``/`` or quotes in a password, so it is not parsed by the book;
#: redacting up to the token's last ``@`` errs towards hiding too much).
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)(\S*)")
#: ``password=...`` in libpq-style connection strings and option lists.
#: Words that name a secret in ``word=value`` settings (redacted here, refused by
#: :func:`srlib.ops.slurm.check_no_credentials`).
SECRET_WORDS = r"password|passwd|pwd|secret|token"
_KEY_VALUE = re.compile(rf"(?i)\b({SECRET_WORDS})(\s*[=:]\s*)([^\s,;&'\"]+)")
_registered: set[str] = set()


def register_secret(value: str | None) -> None:
    """Redact ``value`` (4 characters or more) from everything :func:`redact` sees."""
    if value and len(value) >= 4:
        _registered.add(value)


def _strip_userinfo(match: re.Match[str]) -> str:
    scheme, rest = match.group(1), match.group(2)
    at = rest.rfind("@")
    if at < 0:
        return match.group(0)
    userinfo = rest[:at]
    # credentials (user[:password]) come before the host; "bucket/key@v2" is a path
    if ":" in userinfo or "/" not in userinfo:
        return f"{scheme}***@{rest[at + 1:]}"
    return match.group(0)


def redact(text: str) -> str:
    """Remove secrets from ``text``.

    The whole userinfo of every URL (``scheme://user:password@host``, whatever
    characters the password holds, unencoded ``@`` included), ``password=`` values,
    the values of :data:`srlib.config.SECRET_VARS` and the values given to
    :func:`register_secret`.
    """
    for value in sorted(_registered, key=len, reverse=True):
        text = text.replace(value, "***")
    for var, value in secret_values().items():
        text = text.replace(value, f"<{var}>")
    text = _URL.sub(_strip_userinfo, text)
    return _KEY_VALUE.sub(r"\1\2***", text)


class Notifier(Protocol):
    """Something told about failures."""

    def notify(self, step: str, error: BaseException, *, table: str | None = None,
               context: dict[str, Any] | None = None) -> None:
        """Report that ``step`` failed with ``error``."""


def _message(step: str, error: BaseException, table: str | None,
             context: dict[str, Any] | None) -> str:
    where = ", ".join(f"{k}={v}" for k, v in (context or {}).items())
    text = f"srlib: step '{step}' failed{f' ({where})' if where else ''}: " \
           f"{type(error).__name__}: {error}"
    if table:
        text += f"\n```\n{table}\n```"
    return redact(text)


class LogNotifier:
    """Log failures at DEBUG level (the default, when no webhook is set).

    The caller reports every failure itself (the command line prints one line; ``pdr``
    logs each failed request), so the default notifier does not print it a second time.
    """

    def notify(self, step: str, error: BaseException, *, table: str | None = None,
               context: dict[str, Any] | None = None) -> None:
        """Log the failure."""
        log.debug("%s", _message(step, error, table, context))

    def summary(self, text: str) -> None:
        """Log a report that is not a failure (a finalisation's summary)."""
        log.debug("%s", redact(text))


class WebhookNotifier:
    """POST ``{"text": ...}`` to a Slack-compatible incoming webhook; also log.

    A failure to notify is logged, never raised: it must not hide the original error.
    """

    def __init__(self, url: str, *, timeout: float = 30.0) -> None:
        self._url = url
        self.timeout = timeout

    def __repr__(self) -> str:
        return "WebhookNotifier(<url redacted>)"

    def notify(self, step: str, error: BaseException, *, table: str | None = None,
               context: dict[str, Any] | None = None) -> None:
        """Send and log the failure."""
        text = _message(step, error, table, context)
        log.debug("%s", text)
        from ..failpoints import hit

        try:
            hit("notify")
        except Exception as err:
            log.error("could not send the failure notification: %s", redact(str(err)))
            return
        self._post(text, "failure notification")

    def summary(self, text: str) -> None:
        """Send a report that is not a failure (a finalisation's summary)."""
        log.info("%s", redact(text))
        self._post(redact(text), "summary")

    def _post(self, text: str, what: str) -> None:
        body = json.dumps({"text": text}).encode()
        request = urllib.request.Request(self._url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
        except Exception as err:
            log.error("could not send the %s: %s", what, redact(str(err)))


def notifier_from_env() -> Notifier:
    """``WebhookNotifier`` when ``SRLIB_WEBHOOK_URL`` is set, else ``LogNotifier``."""
    settings = Settings.from_env()
    url = settings.webhook_url
    return WebhookNotifier(url, timeout=settings.network_timeout_s) if url else LogNotifier()


@contextlib.contextmanager
def step(name: str, notifier: Notifier, **context: Any) -> Iterator[None]:
    """Run a job step; on failure notify (with the QC table if any), then re-raise.

    A step that ends after a stop signal raises :class:`srlib.Terminated` (see
    :mod:`srlib.signals`), even when a library swallowed the signal's exception.
    """
    from ..failpoints import hit
    from ..signals import as_stop, check_stop

    try:
        hit("search" if name == "load" else name)
        yield
        check_stop()
    except BaseException as raised:
        err = as_stop(raised)  # after a stop signal, a wrapped stop is still the stop
        report = getattr(err, "report", None)
        table = report.to_table() if report is not None and hasattr(report, "to_table") else None
        # a pipeline stage (inference, writing, qc) tags its errors more precisely
        notifier.notify(step_of(err) or name, err, table=table, context=context)
        if err is raised:
            raise
        raise err from raised
