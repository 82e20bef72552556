"""SIGTERM (how TPU VMs are preempted) and Ctrl-C as a request to stop at the next safe point.

Inside `stop_requests()` the first SIGTERM or SIGINT only sets `.requested`; the work in the block checks it
between steps, saves its state and returns. A second Ctrl-C raises `KeyboardInterrupt` at once, for a user who
will not wait for the save. Outside such a block the signals keep their usual effect. Standard library only.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

log = logging.getLogger(__name__)


class StopRequest:
    def __init__(self):
        self.requested = False
        self.signal_name: str | None = None

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        log.warning("%s received: saving at the next safe point, then stopping%s", self.signal_name,
                    " (Ctrl-C again to stop at once, without saving)" if signum == signal.SIGINT else "")


@contextlib.contextmanager
def stop_requests():
    """Yield a `StopRequest` that SIGTERM and SIGINT set; the old handlers come back on exit. Off the main
    thread (where Python cannot install handlers) the request is never set."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    old = {s: signal.signal(s, request._handle) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield request
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


class Stopped(Exception):
    """Work stopped on request after saving what it had done; the message says how to continue. The command
    prints it and exits with status 3."""
