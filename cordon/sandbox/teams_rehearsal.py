"""``cordon respond PATH --sandbox --approve teams``: Teams approval rehearsed end to end on one machine.

What runs, all real: the Teams stand-in (:class:`cordon.sandbox.teams_standin.TeamsStandIn`: the
connector the card is posted to and updated through, the OpenID metadata and the key set its
invokes are signed with); a ``respond`` worker process serving the deployment the case is
submitted to (:class:`cordon.sandbox.prefect_server.Worker`, on the Prefect server the command
started); Cordon's ``/teams/messages`` endpoint (:func:`cordon.teams.server.teams_router` on
uvicorn, in a thread) with the Teams SDK's token validator pointed at the stand-in, and the
shared decider (:func:`cordon.approvals.decide.make_decider`, resuming the run through Prefect).

The one scripted part is the responder: for each case, once its card is in the stand-in, a click
on *Approve* by :data:`RESPONDER` is signed by the stand-in and POSTed to the endpoint, as Teams
would send it. Everything after (verification, policy, quorum, resume, containment, the card
updated in place) is Cordon's own path.

The rehearsal's configuration is the user's ``cordon.yaml`` in a folder of its own
(:meth:`TeamsRehearsal.configure`) with a ``teams`` section naming the stand-in, the responder
added to the approvers and to ``approval.identities`` (so the self-approval check can rule it
out), and ``rules`` / ``playbooks`` made absolute; ``CORDON_CONFIG`` points there for this process
and the worker. Nothing here disables a check: the invoke must pass the same verification as
Teams' own.
"""

from __future__ import annotations

import contextvars
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from cordon.sandbox.teams_standin import TeamsStandIn

#: The scripted responder's Entra object id (the approver the rehearsal clicks as).
RESPONDER = "00000000-0000-4000-8000-00000000c0de"
RESPONDER_IDENTITY = "responder@sandbox.cordon.invalid"
CONVERSATION = "19:cordon-sandbox-approvals@thread.tacv2"


class RehearsalError(RuntimeError):
    """A part of the rehearsal did not come up or a case did not reach its end in time."""


class TeamsRehearsal:
    """The rehearsal's parts (module docstring). Use: :meth:`configure` (before the configuration
    is loaded), :meth:`start` (with the ledger), :meth:`approve` per submitted case,
    :meth:`stop`. ``timeout`` bounds each wait, in seconds."""

    def __init__(self, timeout: float = 180.0):
        self.timeout = timeout
        self.teams = TeamsStandIn()
        self.workdir = Path(tempfile.mkdtemp(prefix="cordon-teams-rehearsal-"))
        self.worker: Any = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.url: str | None = None
        self._saved: dict[str, str | None] = {}

    # -- set up ---------------------------------------------------------------------------------
    def _setenv(self, name: str, value: str) -> None:
        self._saved.setdefault(name, os.environ.get(name))
        os.environ[name] = value

    def configure(self, config_dir: Path) -> Path:
        """Start the stand-in and write the rehearsal's configuration from ``config_dir`` (the
        user's); sets ``CORDON_CONFIG`` and ``CORDON_TEAMS_CONNECTOR_TOKEN`` for this process and
        the worker. Returns the new folder."""
        self.teams.start()
        source = Path(config_dir)
        data = yaml.safe_load((source / "cordon.yaml").read_text()) or {}
        for key in ("rules", "playbooks"):
            if data.get(key):
                data[key] = str((source / str(data[key])).resolve())
        data["teams"] = {"app_id": self.teams.app_id, "tenant_id": self.teams.tenant_id,
                         "openid_metadata_url": self.teams.openid_metadata_url,
                         "service_url": self.teams.service_url, "conversation_id": CONVERSATION}
        approval = data.setdefault("approval", {}) or {}
        data["approval"] = approval
        approvers = approval.setdefault("approvers", {}) or {}
        approval["approvers"] = approvers
        users = list(approvers.get("users") or [])
        approvers["users"] = [*users, f"teams:{RESPONDER}"]
        identities = dict(approval.get("identities") or {})
        identities[f"teams:{RESPONDER}"] = [RESPONDER_IDENTITY]
        approval["identities"] = identities
        folder = self.workdir / "config"
        folder.mkdir()
        (folder / "cordon.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        self._setenv("CORDON_CONFIG", str(folder))
        self._setenv("CORDON_TEAMS_CONNECTOR_TOKEN", "sandbox-bot-token")
        return folder

    def start(self, ledger: Any, config: Any) -> TeamsRehearsal:
        """Start the worker (``CORDON_DATABASE_URL`` = ``ledger.url``) and Cordon's Teams endpoint
        on ``ledger`` and ``config`` (the loaded rehearsal configuration); returns when the
        ``respond`` deployment is served. Raises :class:`RehearsalError` when it is not in time."""
        from fastapi import FastAPI

        from cordon.approvals.decide import make_decider
        from cordon.audit.refusals import RefusalCounter
        from cordon.sandbox.prefect_server import Worker, deployment_served, free_port
        from cordon.teams.channel import cards_for, teams_settings
        from cordon.teams.server import teams_router
        from cordon.teams.verify import InvokeVerifier

        env = {"CORDON_DATABASE_URL": ledger.url, "PREFECT_API_URL": os.environ.get("PREFECT_API_URL", "")}
        self.worker = Worker({k: v for k, v in env.items() if v}, self.workdir / "worker.log").start()
        cards = cards_for(ledger, config)
        app = FastAPI()
        app.include_router(teams_router(ledger=ledger, verifier=InvokeVerifier(teams_settings(config)),
                                        decide=make_decider(ledger, config),
                                        after=cards.after_decision if cards else None,
                                        refusals=RefusalCounter(ledger)))
        import uvicorn

        port = free_port()
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        # the server's threads must see this context's Prefect settings
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._server.run,),
                                        name="cordon-teams-endpoint", daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{port}"
        self._wait(lambda: self._server.started, "Cordon's Teams endpoint to start")
        self._wait(deployment_served, "the respond deployment to be served by the rehearsal's worker "
                                       f"(its log: {self.workdir / 'worker.log'})")
        return self

    def _wait(self, predicate: Any, what: str) -> Any:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.worker is not None and self.worker.proc is not None and self.worker.proc.poll() is not None:
                raise RehearsalError(f"the rehearsal's worker exited (log: {self.workdir / 'worker.log'})")
            value = predicate()
            if value:
                return value
            time.sleep(0.2)
        raise RehearsalError(f"timed out after {self.timeout:.0f} s waiting for {what}")

    # -- the scripted responder -------------------------------------------------------------------
    def approve(self, ledger: Any, case_id: str, run_id: str) -> dict[str, Any]:
        """:meth:`click` *Approve* on ``case_id``'s card, then wait for the run to close the case.
        Returns ``{"said": what the invoke answered, "closed": the case.closed payload}``
        (``closed`` ``None`` when the click was refused: the case waits, as it would in Teams).
        Raises :class:`RehearsalError` on a timeout or a refused invoke."""
        said, _ = self.click(ledger, case_id, run_id)
        if "recorded" not in said:
            return {"said": said, "closed": None}
        return {"said": said, "closed": self.wait_closed(ledger, case_id, run_id)}

    def click(self, ledger: Any, case_id: str, run_id: str, verb: str = "cordon_approve") -> tuple[str, float]:
        """Wait for ``case_id``'s card (its ``teams.card_posted`` record for run ``run_id``), then
        click ``verb`` on it as :data:`RESPONDER`: an invoke signed by the stand-in, POSTed to
        Cordon's endpoint. Returns (what the invoke answered, when it was sent: ``time.time()``).
        Raises :class:`RehearsalError` on a timeout or a non-200 answer."""

        def card() -> dict[str, Any] | None:
            found = [r.payload for r in ledger.records(case_id=case_id, kind_prefix="teams.card_posted")
                     if r.run_id == run_id]
            return found[-1] if found else None

        ref = self._wait(card, f"the Teams card of {case_id}")
        data = {"case_id": case_id, "plan_hash": ref["plan_hash"], "run_id": run_id}
        activity = self.teams.invoke(verb=verb, data=data, aad_object_id=RESPONDER, name="Sandbox Responder",
                                     conversation_id=ref["conversation_id"], reply_to_id=ref["activity_id"])
        headers = {"Authorization": f"Bearer {self.teams.token()}"}
        sent = time.time()
        r = httpx.post(f"{self.url}/teams/messages", json=activity, timeout=30, headers=headers)
        if r.status_code != 200:
            raise RehearsalError(f"the endpoint refused the scripted click: {r.status_code} {r.text[:200]}")
        return str((r.json() or {}).get("value")), sent

    def wait_closed(self, ledger: Any, case_id: str, run_id: str) -> dict[str, Any]:
        """Wait for run ``run_id`` to close ``case_id`` (its ``case.closed`` payload; an incident's
        member is closed by its lead's run). Raises :class:`RehearsalError` on a timeout."""

        def closed() -> dict[str, Any] | None:
            done = [x.payload for x in ledger.records(case_id=case_id, kind_prefix="case.closed") if x.run_id == run_id]
            return done[-1] if done else None

        return self._wait(closed, f"the run {run_id} to close {case_id}")

    def card(self, ledger: Any, case_id: str) -> dict[str, Any] | None:
        """The case's card as the stand-in holds it now (``None`` without one)."""
        refs = [r.payload for r in ledger.records(case_id=case_id, kind_prefix="teams.card_posted")]
        return self.teams.activity(refs[-1]["conversation_id"], refs[-1]["activity_id"]) if refs else None

    def describe(self) -> str:
        """One line for the command's output: what ran and where."""
        return (f"Teams stand-in {self.teams.origin}, Cordon's /teams/messages {self.url}, a respond worker; "
                f"the approver is the scripted teams:{RESPONDER}")

    def stop(self) -> None:
        """Stop the endpoint, the worker and the stand-in; restore the environment; remove the folder."""
        if self._server is not None:
            self._server.should_exit = True
            if self._thread is not None:
                self._thread.join(10)
        if self.worker is not None:
            self.worker.stop()
        self.teams.stop()
        for name, value in self._saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(self.workdir, ignore_errors=True)

