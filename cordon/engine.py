"""From inputs to cases to playbook runs: what ``cordon respond`` and the webhook do.

    read_inputs ─► detect (Sigma over CloudTrail; findings as they stand) ─► ledger
        ─► route to a playbook ─► open or join the case (database unique key) ─► run the flow

Rejected records go to the ledger's dead-letter table with the reason and are reported; they
never stop the rest of the input. A detection that joins an open case (the same credential seen
again, e.g. a GuardDuty finding after the CloudTrail event) is recorded on that case and starts no
second run.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cordon.audit.ledger import Ledger
from cordon.config import Config, load_config
from cordon.detections.errors import Rejected
from cordon.detections.intake import read_bytes, read_inputs
from cordon.detections.model import Detection
from cordon.detections.pipeline import detect
from cordon.playbooks.schema import Playbook, load_playbooks, route
from cordon.sigma import RuleSet


@dataclass
class CaseTicket:
    """A case this intake opened (``run`` is true) or joined, with the detection that did it."""

    case_id: str
    detection: Detection
    playbook: Playbook | None
    opened: bool
    run: bool


@dataclass
class IntakeReport:
    """What one intake did: cases opened or joined, detections suppressed, records rejected."""

    cases: list[CaseTicket] = field(default_factory=list)
    joined: list[CaseTicket] = field(default_factory=list)
    suppressed: list[Detection] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    detections: int = 0


class Responder:
    """Cordon's core: the configuration, the Sigma rules, the playbooks and the ledger.

    ``config`` defaults to :func:`cordon.config.load_config`; ``ledger`` to the ledger at
    ``CORDON_DATABASE_URL``. Raises :class:`~cordon.sigma.SigmaRuleError` or
    :class:`~cordon.playbooks.schema.PlaybookError` when rules or playbooks are invalid.
    """

    def __init__(self, config: Config | None = None, ledger: Ledger | None = None):
        self.config = config or load_config()
        self.ledger = ledger or Ledger()
        self.rules = RuleSet.load(self.config.rules_dir)
        self.playbooks = load_playbooks(self.config.playbooks_dir)

    def intake(self, sources: Iterable[str | Path], stdin: Any = None) -> IntakeReport:
        """Read ``sources`` (paths, or ``-`` for ``stdin``), record everything, open cases."""
        return self._intake(read_inputs(sources, stdin=stdin))

    def intake_bytes(self, body: bytes, origin: str) -> IntakeReport:
        """The same for one input held in memory (the detection webhook's body)."""
        return self._intake(read_bytes(origin, body))

    def _intake(self, records: Iterable[Any]) -> IntakeReport:
        report = IntakeReport()
        for item in detect(records, self.rules):
            if isinstance(item, Rejected):
                self.ledger.dead_letter(item.origin, item.position, item.field, item.reason, item.raw_text)
                report.rejected.append(item)
                continue
            report.detections += 1
            ticket = self.accept(item)
            if ticket is None:
                report.suppressed.append(item)
            elif ticket.opened:
                report.cases.append(ticket)
            else:
                report.joined.append(ticket)
        return report

    def accept(self, detection: Detection, playbook: Playbook | None = None) -> CaseTicket | None:
        """Record one detection and open or join its case. ``None`` for suppressed detections.
        ``playbook`` skips routing (a manual run names its playbook, :mod:`cordon.manual`)."""
        summary = detection.summary()
        received = {"detection": summary, "raw_ref": detection.raw_ref.model_dump()}
        if detection.suppressed:
            self.ledger.append("detection.received", received, actor=detection.actor.user.uid)
            self.ledger.append("detection.suppressed", {"uid": detection.uid, "reason": detection.suppressed})
            return None
        pb = playbook or route(self.playbooks, detection)
        result = self.ledger.open_case(detection.case_key(), detection.uid, detection.model_dump(mode="json"),
                                       pb.name if pb else None)
        self.ledger.append("detection.received", received, case_id=result.case_id, actor=detection.actor.user.uid)
        if result.opened:
            self.ledger.append("case.opened", {"case_key": detection.case_key(), "detection_uid": detection.uid,
                                               "playbook": pb.name if pb else None}, case_id=result.case_id)
            if pb is None:
                self.ledger.set_case(result.case_id, status="no_playbook")
                self.ledger.append("playbook.none", {"reason": "no playbook's 'when' matches this detection"},
                                   case_id=result.case_id)
        else:
            self.ledger.append("case.joined", {"case_key": detection.case_key(), "detection_uid": detection.uid,
                                               "duplicate": result.duplicate_detection}, case_id=result.case_id)
        return CaseTicket(result.case_id, detection, pb, result.opened, run=result.opened and pb is not None)

    def run(self, ticket: CaseTicket, approval: str = "console", cloud: dict[str, Any] | None = None,
            slack: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run the respond flow for an opened case in this process and return its summary.

        For ``approval="slack"`` use :meth:`submit` instead (a suspended run needs a deployment).
        """
        if not ticket.run or ticket.playbook is None:
            return self.summary_without_run(ticket)
        from flows.respond import respond

        try:
            return respond(case_id=ticket.case_id, detection=ticket.detection.model_dump(mode="json"),
                           playbook=ticket.playbook.name, approval=approval, cloud=self.cloud_for(ticket, cloud),
                           slack=slack)
        except Exception as exc:  # noqa: BLE001 - recorded and reported; the other cases still run
            error = f"{type(exc).__name__}: {exc}"
            self.ledger.append("run.error", {"error": error}, case_id=ticket.case_id, actor="cordon")
            self.ledger.set_case(ticket.case_id, status="error")
            return {**self.summary_without_run(ticket), "status": "error", "error": error}

    def run_all(self, report: IntakeReport, approval: str = "console", sandbox: Any = None,
                cloud: dict[str, Any] | None = None, slack: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Run (or, for ``approval="slack"``, submit) every opened case of ``report``; yields each
        case's summary. With ``sandbox`` (an :class:`~cordon.sandbox.aws.AwsSandbox`), each case's
        detection is seeded first and its run uses the sandbox in the detection's account."""
        def sandbox_for(ticket: CaseTicket) -> Any:
            if hasattr(sandbox, "for_provider"):
                return sandbox.for_provider(ticket.detection.provider)
            return sandbox

        if sandbox is not None:
            for ticket in report.cases:
                if ticket.run:
                    sandbox_for(ticket).seed_from_detection(ticket.detection)
        for ticket in report.cases:
            if sandbox is not None and ticket.run:
                cloud = sandbox_for(ticket).cloud_params()
            if approval == "slack":
                yield self.submit(ticket, cloud=cloud, slack=slack)
            else:
                yield self.run(ticket, approval=approval, cloud=cloud)

    def manual(self, playbook: str, params: dict[str, Any], requested_by: dict[str, Any], approval: str = "console",
               sandbox: Any = None, cloud: dict[str, Any] | None = None,
               slack: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run ``playbook`` by hand with ``params`` (``cordon run``, ``/cordon run``); see
        :func:`cordon.manual.run_manual`. Raises :class:`cordon.manual.ManualRunError`."""
        from cordon.manual import run_manual

        return run_manual(self, playbook, params, requested_by, approval=approval, sandbox=sandbox, cloud=cloud,
                          slack=slack)

    def submit(self, ticket: CaseTicket, cloud: dict[str, Any] | None = None, slack: dict[str, Any] | None = None,
               deployment: str = "respond/respond") -> dict[str, Any]:
        """Start the case's run on the ``respond`` deployment (served by ``cordon worker``), with
        the case ID as Prefect's ``idempotency_key`` so a case never gets two runs."""
        if not ticket.run or ticket.playbook is None:
            return self.summary_without_run(ticket)
        from prefect.deployments import run_deployment

        fr = run_deployment(deployment, parameters={
            "case_id": ticket.case_id, "detection": ticket.detection.model_dump(mode="json"),
            "playbook": ticket.playbook.name, "approval": "slack", "cloud": self.cloud_for(ticket, cloud),
            "slack": slack},
            idempotency_key=ticket.case_id, timeout=0)
        self.ledger.set_case(ticket.case_id, flow_run_id=str(fr.id), status="submitted")
        return {"case_id": ticket.case_id, "playbook": ticket.playbook.name, "flow_run_id": str(fr.id),
                "detection": ticket.detection.summary(), "approval": {"decision": "pending", "approver": None},
                "actions": [], "verified": None, "status": "awaiting_approval"}

    def rollback(self, case_id: str, clients: Any, who: str) -> list[dict[str, Any]]:
        """Undo the containment of ``case_id``: every ``action.contained`` result in the ledger,
        last first, through its action's rollback (where AWS allows one), with ``clients`` (a
        :func:`cordon.clouds.aws_clients` factory). ``who`` is recorded as the actor.

        Returns one dict per action (``name``, ``target``, ``status``: ``rolled_back``,
        ``already_rolled_back``, ``not_supported`` or ``failed``, ``before``, ``after``,
        ``error``). Raises ``KeyError`` for an unknown case and ``ValueError`` when the case has
        no plan.
        """
        from cordon.action import ActionResult, get_action
        from cordon.respond import PlanStep, rollback_step

        case = self.ledger.case(case_id)
        if case is None:
            raise KeyError(f"no case {case_id} in {self.ledger.url}")
        detection = Detection.model_validate_json(case["detection"])
        records = list(self.ledger.records(case_id=case_id))
        plans = [r.payload for r in records if r.kind == "plan.created"]
        if not plans:
            raise ValueError(f"case {case_id} has no containment plan to roll back")
        steps = {(s["action"], s["target"]): s for s in plans[-1]["steps"]}
        done = {(r.payload["name"], r.payload["target"]) for r in records if r.kind == "action.rolled_back"}
        self.ledger.append("rollback.requested", {"by": who}, case_id=case_id, actor=who)
        outcomes: list[dict[str, Any]] = []
        for rec in reversed([r for r in records if r.kind == "action.contained"]):
            key = (rec.payload["name"], rec.payload["target"])
            if key in done:
                outcomes.append({"name": key[0], "target": key[1], "status": "already_rolled_back"})
                continue
            if not get_action(key[0]).rollback_supported:
                outcome = {"name": key[0], "target": key[1], "status": "not_supported",
                           "error": f"{key[0]} cannot be rolled back by Cordon"}
                self.ledger.append("rollback.not_supported", outcome, case_id=case_id, actor=who)
                outcomes.append(outcome)
                continue
            result = rollback_step(PlanStep.model_validate(steps[key]), ActionResult.model_validate(rec.payload),
                                   detection, clients)
            self.ledger.append("action.rolled_back" if result.status == "rolled_back" else "rollback.failed",
                               result.model_dump(), case_id=case_id, actor=who)
            outcomes.append(result.model_dump())
        if outcomes and all(o["status"] in ("rolled_back", "already_rolled_back") for o in outcomes):
            self.ledger.set_case(case_id, status="rolled_back")
        return outcomes

    @staticmethod
    def cloud_for(ticket: CaseTicket, cloud: dict[str, Any] | None) -> dict[str, Any]:
        """``cloud`` for this case: in the sandbox, the detection's own account."""
        cloud = dict(cloud or {})
        if cloud.get("sandbox") and ticket.detection.account_uid:
            cloud["account_id"] = ticket.detection.account_uid
        return cloud

    @staticmethod
    def summary_without_run(ticket: CaseTicket) -> dict[str, Any]:
        """The summary of a case that gets no run (no playbook matched, or joined an open case)."""
        return {"case_id": ticket.case_id, "playbook": ticket.playbook.name if ticket.playbook else None,
                "detection": ticket.detection.summary(), "approval": {"decision": None, "approver": None},
                "actions": [], "verified": None,
                "status": "no_playbook" if ticket.playbook is None else "joined_open_case"}
