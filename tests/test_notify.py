"""Notifications: a real HTTP server on loopback receives them; secrets are redacted."""

from __future__ import annotations

import logging

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from srlib.ops.notify import LogNotifier, WebhookNotifier, notifier_from_env, redact, step

from .servers import webhook


def test_webhook_gets_the_step_error_and_table_then_the_error_is_reraised(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3tvalue")
    with webhook() as (url, received):
        monkeypatch.setenv("SRLIB_WEBHOOK_URL", url)
        notifier = notifier_from_env()
        assert isinstance(notifier, WebhookNotifier) and url not in repr(notifier)
        with pytest.raises(OSError, match="disk full"), step("writing", notifier, tile="29RKH"):
            raise OSError(f"disk full at {url} with key s3cr3tvalue")
    (message,) = received
    text = message["text"]
    assert "step 'writing' failed (tile=29RKH): OSError: disk full" in text
    assert "s3cr3tvalue" not in text and url not in text
    assert "<AWS_SECRET_ACCESS_KEY>" in text and "<SRLIB_WEBHOOK_URL>" in text


def test_unreachable_webhook_never_hides_the_original_error(caplog):
    notifier = WebhookNotifier("http://127.0.0.1:9/hook")
    with caplog.at_level(logging.ERROR, logger="srlib"), pytest.raises(ValueError, match="x"):
        with step("load", notifier):
            raise ValueError("x")
    assert "could not send the failure notification" in caplog.text


def test_default_is_the_debug_log_the_caller_reports_the_error_once(monkeypatch, caplog):
    monkeypatch.delenv("SRLIB_WEBHOOK_URL", raising=False)
    assert isinstance(notifier_from_env(), LogNotifier)
    with caplog.at_level(logging.INFO, logger="srlib"), pytest.raises(KeyError):
        with step("database", LogNotifier()):
            raise KeyError("row")
    assert caplog.text == ""  # the command line prints the one failure line itself
    with caplog.at_level(logging.DEBUG, logger="srlib"), pytest.raises(KeyError):
        with step("database", LogNotifier()):
            raise KeyError("row")
    assert "step 'database' failed" in caplog.text


def test_redact_url_passwords():
    assert redact("postgresql+psycopg://srlib:hunter2@db:5432/x") == \
        "postgresql+psycopg://***@db:5432/x"
    assert redact("s3://bucket/key@v2") == "s3://bucket/key@v2"  # a path, not credentials
    assert redact("host=db password=hunter2 user=x") == "host=db password=*** user=x"


@given(user=st.text(alphabet=st.characters(blacklist_categories=("Cs", "Zs", "Cc")),
                    min_size=1, max_size=12),
       password=st.text(alphabet=st.characters(blacklist_categories=("Cs", "Zs", "Cc")),
                        min_size=4, max_size=24))
@example(user="0", password="fail")  # a password the text also holds ('failed')
@settings(max_examples=300, deadline=None)
def test_no_password_survives_redaction_whatever_it_holds(user, password):
    """Unencoded '@', ':', '/', '#', '%', quotes, non-ASCII: the whole userinfo goes."""
    assume(":" not in user and "@" not in user and "/" not in user)
    for text in ("postgresql+psycopg://{}db.example.org:5432/srlib",
                 "could not connect: 'https://{}hooks.example/x' failed"):
        out = redact(text.format(f"{user}:{password}@"))
        # exactly the userinfo goes (a password such as 'fail' may be in the text itself)
        assert out == text.format("***@")


def test_a_database_url_with_an_unencoded_at_works_and_never_shows_its_password(tmp_path):
    from srlib.ops.db import DatabaseError, MetadataDB, normalise_url

    url = normalise_url("postgresql+psycopg://srlib:p@ss:w/rd#1@127.0.0.1:9/x")
    assert url == "postgresql+psycopg://srlib:p%40ss%3Aw%2Frd%231@127.0.0.1:9/x"
    with pytest.raises(DatabaseError) as info:
        MetadataDB("postgresql+psycopg://srlib:p@ss:w/rd#1@127.0.0.1:9/x", timeout_s=2)
    text = str(info.value)
    assert "127.0.0.1:9" in text and not any(part in text for part in ("p@ss", "ss:w", "rd#1",
                                                                        "p%40ss", "srlib:"))


def test_sigterm_becomes_an_error_that_interrupts_the_run(tmp_path):
    import signal

    import srlib
    from srlib.ops.db import MetadataDB
    from srlib.ops.jobs import run_dr
    from srlib.signals import _handler, _stop

    with pytest.raises(srlib.Terminated, match="SIGTERM"):
        _handler(signal.SIGTERM, None)
    _stop.clear()
    db = MetadataDB(f"sqlite:///{tmp_path / 'm.sqlite'}")

    class Stop:  # a catalogue whose search is interrupted by the batch system
        def __str__(self) -> str:
            _handler(signal.SIGTERM, None)
            return ""

    try:
        with pytest.raises(srlib.Terminated):
            run_dr(date="20200219", mgrs="29RKH", catalog=Stop(), db=db,
                   notifier=LogNotifier())
    finally:
        _stop.clear()
    run = db.run(1)
    assert run["status"] == "interrupted" and "Terminated" in run["error"]
