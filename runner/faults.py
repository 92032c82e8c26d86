"""Fault injection for tests/faults/: ``RUNNER_FAULT_POINT=NAME`` makes the process die at that point
as if SIGKILLed (``os._exit``: no handler, no cleanup, no flush).  Points:

  pre_create   launch recorded *launching*, no container created yet
  created      the container is created but not started (Docker backend)
  post_create  the container is created and started, its id not yet recorded

Unset (always, outside the fault tests) it does nothing.
"""
from __future__ import annotations

import os

ENV = "RUNNER_FAULT_POINT"
EXIT_CODE = 137  # what a SIGKILLed process reports


def point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os._exit(EXIT_CODE)
