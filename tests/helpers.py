"""Small helpers shared by the tests that drive real processes (Prefect server, workers, servers)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """Call ``predicate`` every ``interval`` s until it returns something truthy (returned), or
    raise ``AssertionError`` naming ``what`` after ``timeout`` s. A wait, not a timed assertion:
    the timeout only bounds how long a broken run takes to fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
