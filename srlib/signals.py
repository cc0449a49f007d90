"""Stopping on a signal within seconds, in every stage, without losing the request.

A batch system ends a job with SIGTERM (SLURM at its time limit, then SIGKILL after
``KillWait``, 30 s by default); an operator presses Ctrl-C (SIGINT). :func:`install`
makes SIGTERM, SIGHUP and SIGINT do three things:

1. set a flag that every job step checks when it ends (:func:`check_stop`), so a
   library that swallows the exception (botocore retries on any ``Exception``) cannot
   make the job carry on as if nothing happened;
2. raise :class:`srlib.Terminated` in the main thread at the next Python instruction:
   the job unwinds, ``pdr`` puts its request back to ``pending`` and the run is recorded;
3. wake a watchdog thread (through the signal wakeup file descriptor, written by the C
   handler even while the main thread sits inside a long GDAL or compression call): when
   the process is still alive ``grace_s`` seconds later, the watchdog runs the
   registered release callbacks (``pdr`` releases its claim) and ends the process with
   exit status 128 + the signal's number (143 for SIGTERM, 130 for SIGINT). A thread
   stuck in a read that never answers can therefore not keep the process alive.

A second Ctrl-C does not cut the unwinding short: the watchdog ends the process at the
latest ``grace_s`` seconds after the first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator

from .errors import Terminated

__all__ = ["EXIT_TERMINATED", "as_stop", "check_stop", "exit_status", "install",
           "on_forced_exit", "stop_requested"]

log = logging.getLogger("srlib")

#: Exit status of a process stopped by SIGTERM (128 + 15, as shells report it).
EXIT_TERMINATED = 143

_stop = threading.Event()
#: The signals that stop a job.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
_signal_name = {"name": "SIGTERM"}
_callbacks: list[Callable[[], None]] = []
_installed = {"done": False}
_command = {"name": ""}


def exit_status() -> int:
    """Exit status of a process stopped by the signal received: 128 + its number."""
    return 128 + int(signal.Signals[_signal_name["name"]])


def stop_requested() -> bool:
    """Whether a stop signal was received."""
    return _stop.is_set()


def _stopped() -> Terminated:
    return Terminated(f"stopped by {_signal_name['name']}; the run was not completed "
                      "(a pdr request goes back to pending, a dr job resumes when rerun)")


def check_stop() -> None:
    """Raise :class:`srlib.Terminated` when a stop signal was received."""
    if _stop.is_set():
        raise _stopped()


def as_stop(err: BaseException) -> BaseException:
    """Return the error a job that unwound with ``err`` ends with.

    After a stop signal, whatever error unwound the job is the stop: a library (or a
    step's own ``except Exception``) may have wrapped :class:`srlib.Terminated` in its
    error, or failed on the request the signal interrupted. Then a new
    :class:`srlib.Terminated` caused by ``err`` is returned (the request goes back to
    ``pending``, uncounted; the process exits with :func:`exit_status`); else ``err``.
    """
    if not _stop.is_set() or isinstance(err, Terminated | KeyboardInterrupt | SystemExit):
        return err
    stop = _stopped()
    stop.__cause__ = err
    return stop


@contextlib.contextmanager
def on_forced_exit(callback: Callable[[], None]) -> Iterator[None]:
    """Run ``callback`` if the watchdog has to end the process while the block runs."""
    _callbacks.append(callback)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            _callbacks.remove(callback)


def _handler(signum: int, _frame: object) -> None:
    _signal_name["name"] = signal.Signals(signum).name
    first = not _stop.is_set()
    _stop.set()
    if first:
        check_stop()


def _watchdog(read_fd: int, grace_s: float) -> None:
    while True:
        try:
            data = os.read(read_fd, 64)
        except InterruptedError:
            continue
        except OSError:
            return
        if not data:
            return
        signums = [b for b in data if b in STOP_SIGNALS]
        if not signums:
            continue
        # The kernel may hand the signal to any thread. Python runs its handler in the
        # main thread, but only once that thread runs Python code again: a main thread
        # asleep in a system call (a read, a lock, a sleep) would not notice. Sending the
        # signal to the main thread itself interrupts that call (EINTR), so the handler
        # runs and raises there at once.
        time.sleep(0.2)
        if not _stop.is_set():
            main = threading.main_thread().ident
            with contextlib.suppress(Exception):
                if main is not None:
                    signal.pthread_kill(main, signums[0])
        time.sleep(max(grace_s - 0.2, 0.0))  # for the main thread to unwind on its own
        log.error("srlib: still running %.0f s after %s; releasing and exiting", grace_s,
                  _signal_name["name"])
        with contextlib.suppress(Exception):
            log.warning("srlib: where each thread was when the process was ended:\n%s",
                        _stacks())
        for callback in list(_callbacks):
            with contextlib.suppress(Exception):
                callback()
        with contextlib.suppress(Exception):
            name = f"srlib {_command['name']}".rstrip()
            sys.stderr.write(f"{name} failed: stopped by {_signal_name['name']}; a stage did "
                             f"not end within {grace_s:.0f} s, the process was ended\n")
            sys.stderr.flush()
        os._exit(exit_status())


def _stacks() -> str:
    """Return the stack of every other thread, for a process that would not stop."""
    import traceback

    names = {t.ident: t.name for t in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        if ident == threading.get_ident():
            continue
        stack = "".join(traceback.format_stack(frame, limit=12))
        parts.append(f"thread {names.get(ident, ident)}:\n{stack}")
    return "\n".join(parts)


def install(*, grace_s: float = 10.0, command: str | None = None) -> None:
    """Handle SIGTERM, SIGHUP and SIGINT as the module docstring says (main thread only).

    ``command`` names the subcommand in the line printed when the watchdog ends the
    process (``srlib pdr failed: ...``), the same line a failing command prints.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    _command["name"] = command or ""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _handler)
    if _installed["done"]:
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    try:
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except ValueError:  # not the main thread of the main interpreter
        os.close(read_fd)
        os.close(write_fd)
        return
    _installed["done"] = True
    threading.Thread(target=_watchdog, args=(read_fd, grace_s), daemon=True,
                     name="srlib-signal-watchdog").start()
