"""Ctrl-C around the steps it must not cut in half (the main thread only: the server's threads are left alone)."""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


@contextlib.contextmanager
def ignoring_sigint() -> Iterator[None]:
    """A second Ctrl-C must not interrupt the stop that the first one asked for."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def deferring_sigint() -> Iterator[threading.Event]:
    """Ctrl-C while a container is being created: remembered (the event returned), not raised in the middle
    of the create/record steps (where it would leave a container nobody stops); the caller acts on it once
    the launch is settled.  Outside the main thread (the server) nothing changes."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: flag.set())
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
