"""A flow for tests of :mod:`cordon.runner`: each execution appends ``<run id> <pid>`` to the file
``CORDON_TEST_RUNS_FILE`` names (O_APPEND: lines from several processes do not interleave)."""

from __future__ import annotations

import os
import time

from prefect import flow
from prefect.runtime import flow_run


@flow(name="warm-probe")
def probe(sleep: float = 0.0) -> int:
    """Record this execution, sleep ``sleep`` seconds; returns the pid that ran it."""
    with open(os.environ["CORDON_TEST_RUNS_FILE"], "a") as fh:
        fh.write(f"{flow_run.id} {os.getpid()}\n")
    time.sleep(sleep)
    return os.getpid()


def serve() -> None:
    """Serve ``warm-probe/probe`` with the warm runner (as ``cordon worker`` serves ``respond``)."""
    from cordon.runner import WarmRunner

    WarmRunner([(probe, probe.to_deployment(name="probe"))]).serve()


if __name__ == "__main__":
    serve()
