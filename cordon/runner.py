"""The warm runner: Prefect deployment runs executed in one long-lived process, in threads.

Prefect's own runner (``flow.serve()``, ``prefect worker start``) starts every flow run, and every
resumed run, in a new Python process: 2.9-3.9 s of interpreter start, imports and unpickling on
this project's 2-core reference box before the first step of a case, and again after each
approval click. :class:`WarmRunner` does what Prefect's runner does (poll the API for the
deployments' SCHEDULED runs, claim each with a ``Pending`` proposal, execute it with Prefect's flow
engine) but executes the run in a thread of the process that already imported Cordon, its
playbooks, its cloud clients and Prefect. The run is still an ordinary Prefect flow run of an
ordinary deployment: the UI, ``prefect flow-run ls``, task runs, logs, artifacts, ``suspend_flow_run``
and ``resume_flow_run`` are unchanged; a suspended run holds no thread.

Durability is Prefect's and the ledger's, not this process's memory:

* a claim is Prefect's ``Scheduled -> Pending`` transition, which the server grants once
  (``PreventPendingTransitions``): several warm runners, on one machine or several, never execute
  the same run twice, and more runners add throughput;
* each execution writes ``run.process`` naming this process (:func:`cordon.recovery.process_ref`),
  so a runner killed while a run executes leaves a run :mod:`cordon.recovery` finds dead and runs
  again (idempotent containment, ``step.started`` write-ahead), exactly as with Prefect's runner;
* a run this runner claimed and never started (killed between the claim and the start) stays
  ``PENDING`` in Prefect; recovery strands it after ``CORDON_RECOVERY_START_GRACE_SECONDS``.

Waking: a thread subscribes to the Prefect API's event stream (``/api/events/out``, the websocket
``prefect.events.clients.get_events_subscriber`` reads) for ``prefect.flow-run.*`` events of the
served deployments, and a flow run entering a SCHEDULED state (a new run, ``Resuming`` after an
approval, ``AwaitingRetry``) wakes the poll at once; a run finishing in this process does too (a
slot is free). While the stream is connected the API is also polled every
``CORDON_RUNNER_IDLE_POLL_SECONDS`` (default 2: runs scheduled for later, an event missed across a
reconnect); while it is not, every ``CORDON_RUNNER_POLL_SECONDS`` (default 0.25). The poll, not the
event, is what claims a run, so a lost or duplicated event costs at most one interval or one
extra poll, never a run.

Settings: those two and ``CORDON_RUNNER_SLOTS`` (runs executing at once in this process; default 8).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.deployments.runner import RunnerDeployment

log = logging.getLogger("cordon.runner")


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, "") or default)
    except ValueError:
        return default


@dataclass
class WarmRunner:
    """Serve deployments from this process: poll, claim, execute in a thread pool.

    ``deployments`` are ``(flow, RunnerDeployment)`` pairs (``flow.to_deployment(...)``), each
    registered with the API by :meth:`start` (``RunnerDeployment.apply``: name, schedule,
    parameters, tags as ``flow.serve`` would). ``poll_seconds`` is the interval between API polls
    (``GET``-like ``/deployments/get_scheduled_flow_runs``, which also marks the deployments
    polled, so the UI shows them ready); ``slots`` bounds the runs executing at once (a run waiting
    for approval is suspended and takes no slot).
    """

    deployments: list[tuple[Flow, RunnerDeployment]]
    poll_seconds: float = field(default_factory=lambda: _env_float("CORDON_RUNNER_POLL_SECONDS", 0.25))
    slots: int = field(default_factory=lambda: int(_env_float("CORDON_RUNNER_SLOTS", 8)))
    idle_poll_seconds: float = field(default_factory=lambda: _env_float("CORDON_RUNNER_IDLE_POLL_SECONDS", 2.0))
    _flows: dict[UUID, Flow] = field(default_factory=dict, init=False)
    _inflight: dict[UUID, Future] = field(default_factory=dict, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _wake: threading.Event = field(default_factory=threading.Event, init=False)
    #: set while the event stream is connected (:meth:`_listen`)
    listening: threading.Event = field(default_factory=threading.Event, init=False)
    _pool: ThreadPoolExecutor | None = field(default=None, init=False)

    def start(self) -> list[UUID]:
        """Register the deployments with the Prefect API; returns their IDs. Raises what the
        Prefect client raises when the API is unreachable."""
        for flow, dep in self.deployments:
            dep_id = dep.apply()
            self._flows[UUID(str(dep_id))] = flow
        self._pool = ThreadPoolExecutor(max_workers=max(1, self.slots), thread_name_prefix="cordon-run")
        return list(self._flows)

    def stop(self) -> None:
        """Stop claiming runs (those executing finish; a SIGTERM handler calls this)."""
        self._stop.set()
        self._wake.set()

    def poll_once(self, client: Any) -> list[UUID]:
        """One poll: claim every scheduled run that is due and fits a free slot, and start it.
        Returns the IDs of the runs started. ``client`` is a synchronous Prefect client."""
        from prefect.exceptions import Abort
        from prefect.states import Pending
        from prefect.utilities.engine import propose_state_sync

        for run_id, fut in list(self._inflight.items()):
            if fut.done():
                del self._inflight[run_id]
        free = self.slots - len(self._inflight)
        if free <= 0:
            return []
        runs = client.get_scheduled_flow_runs_for_deployments(
            deployment_ids=list(self._flows), scheduled_before=datetime.now(UTC) + timedelta(seconds=0.5),
            limit=free)
        started = []
        for run in sorted(runs, key=lambda r: (r.next_scheduled_start_time is None, r.next_scheduled_start_time)):
            flow = self._flows.get(run.deployment_id) if run.deployment_id else None
            if flow is None or run.id in self._inflight or len(self._inflight) >= self.slots:
                continue
            try:
                state = propose_state_sync(client, Pending(), flow_run_id=run.id)
            except Abort:  # another runner claimed it first
                continue
            if not state.is_pending():
                continue
            assert self._pool is not None
            self._inflight[run.id] = fut = self._pool.submit(self._execute, flow, run.id)
            fut.add_done_callback(lambda _: self._wake.set())  # a slot is free: look for waiting runs
            started.append(run.id)
        return started

    @staticmethod
    def _execute(flow: Flow, flow_run_id: UUID) -> None:
        from prefect.client.orchestration import get_client
        from prefect.exceptions import Abort, Pause
        from prefect.flow_engine import run_flow

        try:
            with get_client(sync_client=True) as client:
                flow_run = client.read_flow_run(flow_run_id)
            run_flow(flow, flow_run=flow_run, return_type="state")
        except Pause:  # suspend_flow_run: the run waits (for approval) in Prefect, holding nothing here
            log.info("flow run %s is suspended", flow_run_id)
        except Abort as exc:  # the orchestrator refused a transition (e.g. the run was cancelled)
            log.info("flow run %s aborted by the orchestrator: %s", flow_run_id, exc)
        except BaseException:  # noqa: BLE001 - one run's failure never stops the runner
            log.exception("flow run %s raised out of the flow engine", flow_run_id)

    def serve(self) -> None:
        """Register, then poll until SIGTERM / SIGINT; runs executing when asked to stop are
        waited for (a suspended run holds nothing). Blocks."""
        from prefect.client.orchestration import get_client

        self.start()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())
        names = ", ".join(f"{f.name}/{d.name}" for f, d in self.deployments)
        print(f"Cordon warm runner serving {names} (poll {self.poll_seconds} s, {self.slots} slots, "
              f"pid {os.getpid()})", flush=True)
        threading.Thread(target=self._listen, name="cordon-runner-events", daemon=True).start()
        with get_client(sync_client=True) as client:
            while not self._stop.is_set():
                self._wake.clear()
                try:
                    self.poll_once(client)
                except Exception as exc:  # noqa: BLE001 - the API may be restarting: keep polling
                    log.warning("polling Prefect for scheduled runs failed: %s", exc)
                    self._stop.wait(min(5.0, self.poll_seconds * 8))
                self._wake.wait(self.idle_poll_seconds if self.listening.is_set() else self.poll_seconds)
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _listen(self) -> None:
        """Thread body: keep a subscription to the API's event stream and set the wake on every
        flow run of the served deployments that enters a SCHEDULED state (module docstring).
        Reconnects after a failure (1 s apart); polling covers the time it is down."""
        asyncio.run(self._subscribe())

    async def _subscribe(self) -> None:
        from prefect.events.clients import get_events_subscriber
        from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventRelatedFilter

        related = [f"prefect.deployment.{dep_id}" for dep_id in self._flows]
        while not self._stop.is_set():
            wanted = EventFilter(occurred=EventOccurredFilter(since=datetime.now(UTC)),
                                 event=EventNameFilter(prefix=["prefect.flow-run."]),
                                 related=EventRelatedFilter(id=related))
            try:
                async with get_events_subscriber(filter=wanted, reconnect_on_clean_close=True) as events:
                    self.listening.set()
                    self._wake.set()  # poll once now: runs scheduled before the stream connected
                    print(f"Cordon warm runner listening to {len(related)} deployment(s)' flow-run events",
                          flush=True)
                    async for event in events:
                        state = (event.payload or {}).get("validated_state") or {}
                        if state.get("type") == "SCHEDULED":
                            self._wake.set()
            except Exception as exc:  # noqa: BLE001 - the server may be restarting: poll meanwhile
                log.warning("the Prefect event stream failed (polling every %s s meanwhile): %s",
                            self.poll_seconds, exc)
            finally:
                self.listening.clear()
            await asyncio.sleep(1.0)
