"""From inputs to cases to playbook runs: what ``cordon respond`` and the webhook do.

    read_inputs ─► detect (Sigma over CloudTrail; findings as they stand) ─► ledger
        ─► route to a playbook ─► open or join the case (database unique key) ─► run the flow

Rejected records go to the ledger's dead-letter table with the reason and are reported; they
never stop the rest of the input. A detection that joins an open case (the same credential seen
again, e.g. a GuardDuty finding after the CloudTrail event) is recorded on that case and starts no
second run, unless the case's run is gone (:mod:`cordon.recovery`): then the join runs it again.

Every run is asked for in the ledger first (``run.requested``, with the approval mode and the
requesting process, :func:`cordon.recovery.claim_attempt`), so a run that dies with its process
is found and run again; the flow gets only a case reference and reads the (redacted) detection
from the ledger.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cordon.approvals.modes import WAITING_MODES, waits
from cordon.audit.ledger import Ledger, redact
from cordon.config import Config, load_config
from cordon.detections.errors import Rejected
from cordon.detections.intake import read_bytes, read_inputs
from cordon.detections.model import Detection
from cordon.detections.pipeline import DetectStats, detect
from cordon.playbooks.schema import Playbook, load_playbooks, route, routed_because
from cordon.providers import get_provider
from cordon.recovery import (
    CLOSED_STATUSES,
    DEPLOYMENT,
    IN_PROCESS,
    RunCheck,
    check_case,
    claim_attempt,
    idempotency_key,
    open_members,
    process_ref,
)
from cordon.respond import CaseSummary
from cordon.sigma import RuleSet
from cordon.standins import as_stand_ins

#: Statuses of a closed case that a new detection of its credential opens a linked case after: the
#: credential was answered (contained, or a person said no, or it was rolled back) and may be live
#: again. Not ``refused`` / ``no_containment`` / ``no_playbook``: nothing would be done again.
REOPENED_FROM = frozenset({"contained", "already_contained", "rolled_back", "not_verified", "failed", "denied",
                           "expired", "plan_changed"})

#: Entry point group of the flows the core runs by name (the ``respond`` flow): the core finds them
#: there rather than importing the layer above it (``cordon/flows``).
FLOWS_GROUP = "cordon.flows"


def respond_flow() -> Any:
    """The ``respond`` flow (:func:`cordon.flows.respond.respond`), found by entry point
    (:data:`FLOWS_GROUP`). Raises ``LookupError`` when the installed distribution registers none."""
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group=FLOWS_GROUP) if ep.name == "respond"]
    if not found:
        raise LookupError(f"no 'respond' flow registered (entry point group '{FLOWS_GROUP}'): reinstall Cordon")
    return found[0].load()


class SandboxCaseError(ValueError):
    """A real-cloud operation (rollback) asked for a case that ran against the sandbox."""


@dataclass
class CaseTicket:
    """A case this intake opened or joined, with the detection that did it. ``run`` is true when
    the case needs a run: it was opened here, or it was joined and its run is gone (``check``
    says why; ``attempt`` is then the next attempt, ``mode`` the approval mode its runs were
    recorded with, ``None`` if unknown). ``status`` is the case's status when joined."""

    case_id: str
    detection: Detection
    playbook: Playbook | None
    opened: bool
    run: bool
    attempt: int = 1
    mode: str | None = None
    reason: str = "opened"
    check: RunCheck | None = None
    status: str | None = None
    #: the incident the case belongs to (:meth:`Responder.correlate`), if any
    incident_id: str | None = None
    #: the other cases of its incident this case's run answers too (it is their lead):
    #: ``[{"case_id", "playbook", "cloud"}]`` (:meth:`Responder.incident_runs`)
    members: list[dict[str, Any]] = field(default_factory=list)
    #: the objects its run's containment rewrites (its own and its members',
    #: :meth:`cordon.providers.Provider.plan_conflict_key`), set with ``members``
    conflict_keys: list[str] = field(default_factory=list)


def strictness(ticket: CaseTicket) -> tuple[bool, int, bool, int]:
    """How strict the approval policy of ``ticket``'s playbook is, for choosing an incident's lead
    (whose policy its one approval request follows): required first, then the quorum (a
    ``critical`` detection needs 2 unless the playbook says), then ``on_expiry: deny``, then the
    shorter expiry."""
    a = ticket.playbook.approval if ticket.playbook is not None else None
    if a is None:
        return (False, 0, False, 0)
    quorum = a.quorum or (2 if ticket.detection.severity == "critical" else 1)
    return (a.required, quorum, a.on_expiry == "deny", -a.expire_seconds)


def _conflict_key(ticket: CaseTicket) -> str | None:
    return get_provider(ticket.detection.provider).plan_conflict_key(ticket.detection)


def redact_detection(detection: Detection) -> Detection:
    """``detection`` with every secret redacted (:func:`cordon.audit.ledger.redact` over its JSON
    form: CloudTrail ``secretAccessKey``/``sessionToken``, ``password``, Graph ``secretText``, GCP
    ``privateKeyData``, tokens and ``password=`` text in any string). Intake applies it to each
    detection once, before the detection is printed, recorded, posted or passed to Prefect."""
    return Detection.model_validate(redact(detection.model_dump(mode="json")))


def run_tags(ticket: CaseTicket) -> list[str]:
    """Prefect tags of the case's run: ``cordon``, ``provider:<aws|azure|gcp>``,
    ``playbook:<name>``, ``severity:<low|medium|high|critical|...>`` (the detection's), and
    ``attempt:<n>`` after the first attempt. Filter runs by them in the Prefect UI or with
    ``prefect flow-run ls --tag``; concurrency limits can be set per tag."""
    det = ticket.detection
    tags = ["cordon", f"provider:{det.provider}", f"severity:{det.severity or 'unknown'}"]
    if ticket.playbook is not None:
        tags.append(f"playbook:{ticket.playbook.name}")
    if ticket.attempt > 1:
        tags.append(f"attempt:{ticket.attempt}")
    return tags


@dataclass
class IntakeReport:
    """What one intake did: cases opened or joined, detections suppressed, records rejected."""

    cases: list[CaseTicket] = field(default_factory=list)
    joined: list[CaseTicket] = field(default_factory=list)
    suppressed: list[Detection] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    detections: int = 0
    #: records read from the inputs (every one ends a detection's source, suppressed, unmatched or rejected)
    records_read: int = 0


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

    def intake_records(self, items: Iterable[tuple[str, bytes]]) -> IntakeReport:
        """The same for several inputs held in memory, ``(origin, body)`` each (what a sensor read
        in one pass), in one intake: one actor's burst across them is grouped as in one file."""
        from itertools import chain

        return self._intake(chain.from_iterable(read_bytes(origin, body) for origin, body in items))

    def _intake(self, records: Iterable[Any]) -> IntakeReport:
        report = IntakeReport()
        stats = DetectStats()
        to_run: set[str] = set()  # one run per case per intake, however many detections join it
        for item in detect(records, self.rules, stats=stats):
            if isinstance(item, Rejected):
                self.ledger.dead_letter(item.origin, item.position, item.field, item.reason, item.raw_text)
                report.rejected.append(item)
                continue
            report.detections += 1
            item = redact_detection(item)  # before anything leaves the process: stdout, Prefect, Slack, ledger
            ticket = self.accept(item)
            self.correlate(ticket)
            self._file(report, to_run, ticket, item)
            if ticket is not None and ticket.opened and self.config.actor_access:
                actor = self.accept_actor_access(ticket)
                if actor is not None:
                    self.correlate(actor, like=ticket)
                    self._file(report, to_run, actor, actor.detection)
        report.records_read = stats.records_read
        return report

    @staticmethod
    def _file(report: IntakeReport, to_run: set[str], ticket: CaseTicket | None, detection: Detection) -> None:
        """Put one accepted detection's ticket in ``report`` (one run per case per intake)."""
        if ticket is not None and ticket.run:
            ticket.run = ticket.case_id not in to_run
            to_run.add(ticket.case_id)
        if ticket is None:
            report.suppressed.append(detection)
        elif ticket.opened:
            report.cases.append(ticket)
        else:
            report.joined.append(ticket)

    def correlate(self, ticket: CaseTicket | None, like: CaseTicket | None = None) -> None:
        """Put a case this intake opened in its actor's incident (:meth:`cordon.audit.ledger.Ledger.
        assign_incident`, keyed by :meth:`cordon.providers.Provider.actor_key` of ``like``'s
        detection, else the ticket's own: the actor-access case joins the incident of the case that
        revealed it) and set ``ticket.incident_id``. Cases joined, suppressed, without a playbook
        or without an actor are left out."""
        if ticket is None or not ticket.opened or ticket.playbook is None:
            return
        source = (like or ticket).detection
        key = get_provider(source.provider).actor_key(source)
        if key is None:
            return
        actor = source.actor.model_dump(mode="json", include={"user", "session_uid", "session_issuer", "src_ip"})
        ticket.incident_id = self.ledger.assign_incident(
            ticket.case_id, key, window_seconds=self.config.incident_window_seconds, actor=actor,
            provider=source.provider).incident_id

    def incident_runs(self, tickets: Iterable[CaseTicket], skipped: Iterable[str] = ()) -> dict[str, list[CaseTicket]]:
        """Which tickets one run answers together (``incidents.one_run``): the new cases (first
        attempt, opened by this intake, to be run) of one incident, two or more, led by the one
        whose playbook's approval policy is strictest (:func:`strictness`; the first on a tie). A
        case whose containment rewrites an object another case of the group already plans
        (:meth:`cordon.providers.Provider.plan_conflict_key`) is left to run alone. Returns
        ``{lead case_id: [member tickets]}``."""
        if not self.config.incident_one_run:
            return {}
        skip = set(skipped)
        groups: dict[str, list[CaseTicket]] = {}
        for t in tickets:
            if (t.run and t.opened and t.attempt == 1 and t.incident_id and t.playbook is not None
                    and t.case_id not in skip):
                groups.setdefault(t.incident_id, []).append(t)
        out: dict[str, list[CaseTicket]] = {}
        for group in groups.values():
            # cases whose containment rewrites the same object are never planned together: the
            # first of them stays in the group, the others run alone (after it, in one process)
            taken: set[str] = set()
            together = []
            for t in group:
                key = get_provider(t.detection.provider).plan_conflict_key(t.detection)
                if key is None or key not in taken:
                    together.append(t)
                    taken.update([key] if key else [])
            if len(together) < 2:
                continue
            lead = max(together, key=strictness)
            out[lead.case_id] = [t for t in together if t is not lead]
        return out

    def group_incidents(self, tickets: Iterable[CaseTicket], skipped: Iterable[str] = (),
                        params_of: Any = None) -> dict[str, list[CaseTicket]]:
        """:meth:`incident_runs`, made durable before any run is asked for: each lead's ``members``
        (``{case_id, playbook, cloud}``, ``cloud`` from ``params_of(ticket)`` through
        :meth:`cloud_for`) and each member's ``run.delegated`` (:meth:`delegate`). The caller
        claims and starts only the leads' runs."""
        tickets = list(tickets)
        incidents = self.incident_runs(tickets, skipped)
        by_id = {t.case_id: t for t in tickets}
        for lead_id, members in incidents.items():
            lead = by_id[lead_id]
            lead.members = [{"case_id": m.case_id, "playbook": m.playbook.name,
                             "cloud": self.cloud_for(m, params_of(m) if params_of else None)} for m in members]
            lead.conflict_keys = [k for k in (_conflict_key(t) for t in [lead, *members]) if k]
            for m in members:
                self.delegate(lead, m)
        return incidents

    def join_queued(self, tickets: Iterable[CaseTicket], approval: str, skipped: Iterable[str] = (),
                    params_of: Any = None) -> dict[str, str]:
        """Put each new case (first attempt, to be run, in an incident) in its incident's queued
        run when there is one (``incidents.join_queued``: a run requested on the deployment and not
        yet planning; :meth:`cordon.audit.ledger.Ledger.join_incident_run` says which may take it).
        In a storm the worker's queue makes the batches: an actor's keys that arrive in many
        webhook posts are answered by few runs, each one message and one decision. Returns
        ``{case_id: lead case_id}`` for the cases that joined; the others get runs as before."""
        if not (self.config.incident_one_run and self.config.incident_join_queued):
            return {}
        skip = set(skipped)
        out: dict[str, str] = {}
        for t in tickets:
            if not (t.run and t.opened and t.attempt == 1 and t.incident_id and t.playbook is not None
                    and t.case_id not in skip):
                continue
            member = {"case_id": t.case_id, "playbook": t.playbook.name,
                      "cloud": self.cloud_for(t, params_of(t) if params_of else None)}
            lead = self.ledger.join_incident_run(t.case_id, t.incident_id, mode=approval, where=DEPLOYMENT,
                                                 strictness=list(strictness(t)), conflict_key=_conflict_key(t),
                                                 member=member, max_cases=self.config.incident_max_cases)
            if lead is not None:
                out[t.case_id] = lead
        return out

    def joined_summary(self, lead_case_id: str, member: CaseTicket) -> dict[str, Any]:
        """:meth:`member_summary` of a case that joined ``lead_case_id``'s queued run."""
        lead = self.ledger.case(lead_case_id) or {}
        return self.member_summary({"case_id": lead_case_id, "flow_run_id": lead.get("flow_run_id"),
                                    "status": "awaiting_approval"}, member)

    @staticmethod
    def member_summary(lead: dict[str, Any], member: CaseTicket) -> dict[str, Any]:
        """The summary of an incident member whose lead's run was just submitted (``lead``: its
        summary): the same run and status, with the incident named."""
        return CaseSummary.opened(member.case_id, member.playbook.name if member.playbook else None, member.detection,
                                  flow_run_id=lead.get("flow_run_id"), incident_id=member.incident_id,
                                  approval={"decision": "pending", "approver": None},
                                  status=lead.get("status"), lead_case_id=lead.get("case_id")).out()

    def accept_actor_access(self, ticket: CaseTicket) -> CaseTicket | None:
        """Open (or join) the case of the access ``ticket``'s actor signed with
        (:meth:`cordon.providers.Provider.actor_access`: an AWS access key, an assumed role's
        sessions), answered by the playbook the provider names, when ``actor_access`` is on in
        ``cordon.yaml``. Only behind a case whose playbook contains (a triage playbook's actor, an
        infrastructure role, is left alone). Both cases get a ``case.actor_access`` record naming
        the other. ``None`` when there is nothing to open (no actor access, or its playbook is not
        loaded: ``actor_access.no_playbook`` on the first case)."""
        if ticket.playbook is None or not ticket.playbook.contain:
            return None
        access = get_provider(ticket.detection.provider).actor_access(ticket.detection)
        if access is None:
            return None
        pb = self.playbook_named(access.playbook)
        if pb is None:
            self.ledger.append("actor_access.no_playbook", {"playbook": access.playbook}, case_id=ticket.case_id)
            return None
        actor = self.accept(access.detection, playbook=pb)
        if actor is None:
            return None
        cred = access.detection.credential
        what = {"kind": cred.kind, "uid": cred.uid, "owner": cred.owner.uid} if cred else None
        self.ledger.append("case.actor_access", {"actor_case": actor.case_id, "credential": what,
                                                 "opened": actor.opened}, case_id=ticket.case_id)
        self.ledger.append("case.actor_access", {"revealed_by_case": ticket.case_id, "credential": what},
                           case_id=actor.case_id)
        return actor

    def accept(self, detection: Detection, playbook: Playbook | None = None) -> CaseTicket | None:
        """Record one detection and open or join its case. ``None`` for suppressed detections.
        ``playbook`` skips routing (a manual run names its playbook, :mod:`cordon.manual`)."""
        summary = detection.summary()
        received = {"detection": summary, "raw_ref": detection.raw_ref.model_dump()}
        if detection.suppressed:
            self.ledger.append("detection.received", received, actor=detection.actor.user.uid)
            self.ledger.append("detection.suppressed", {"uid": detection.uid, "reason": detection.suppressed})
            return None
        infrastructure = self.config.infrastructure_principals
        pb = playbook or route(self.playbooks, detection, infrastructure)
        because = None if playbook else routed_because(pb, detection, infrastructure)
        result = self.ledger.open_case(detection.case_key(), detection.uid, detection.model_dump(mode="json"),
                                       pb.name if pb else None)
        self.ledger.append("detection.received", received, case_id=result.case_id, actor=detection.actor.user.uid)
        if result.opened:
            self.ledger.append("case.opened", {"case_key": detection.case_key(), "detection_uid": detection.uid,
                                               "playbook": pb.name if pb else None, "by": process_ref(),
                                               **({"because": because} if because else {})},
                               case_id=result.case_id)
            if pb is None:
                self.ledger.set_case(result.case_id, status="no_playbook")
                self.ledger.append("playbook.none", {"reason": "no playbook's 'when' matches this detection"},
                                   case_id=result.case_id)
            return CaseTicket(result.case_id, detection, pb, True, run=pb is not None)
        self.ledger.append("case.joined", {"case_key": detection.case_key(), "detection_uid": detection.uid,
                                           "duplicate": result.duplicate_detection}, case_id=result.case_id)
        if not result.duplicate_detection:
            linked = self._reopen(result.case_id, detection, pb)
            if linked is not None:
                return linked
        return self._joined(result.case_id, detection)

    def _reopen(self, case_id: str, detection: Detection, routed: Playbook | None) -> CaseTicket | None:
        """A new detection of a closed case's credential (issue 14: a contained credential is looked
        at again): the case's newest linked case when that one is still open (the detection joins
        it), else a new case linked to it (key ``<case key>#<n>``, ``case.linked`` on it and
        ``case.reopened`` on the first case), answered like any case: its run reads the credential
        again, closes ``already_contained`` without asking anyone when nothing is live, and plans,
        asks and contains when it is live again. ``None`` (an ordinary join) when the case is open,
        was never answered (:data:`REOPENED_FROM`), or the detection is of Cordon's own call (the
        identity its guard recorded: a rollback re-enabling the key, a containment)."""
        case = self.ledger.case(case_id) or {}
        if case.get("status") not in REOPENED_FROM:
            return None
        records = list(self.ledger.records(case_id=case_id))
        if self._own_call(detection, records):
            self.ledger.append("case.not_reopened", {"detection_uid": detection.uid,
                                                     "reason": "the detection is of Cordon's own call"},
                               case_id=case_id)
            return None
        links = [str(r.payload["linked_case"]) for r in records if r.kind == "case.reopened"]
        if links:
            newest = self.ledger.case(links[-1]) or {}
            if newest and newest.get("status") not in CLOSED_STATUSES:
                self.ledger.append("detection.received", {"detection": detection.summary(),
                                                          "raw_ref": detection.raw_ref.model_dump()},
                                   case_id=links[-1], actor=detection.actor.user.uid)
                self.ledger.append("case.joined", {"case_key": newest.get("case_key"), "detection_uid": detection.uid,
                                                   "duplicate": False, "via": case_id}, case_id=links[-1])
                return self._joined(links[-1], detection)
        pb = routed or self.playbook_named(case.get("playbook"))
        n = len(links) + 2
        key = f"{case['case_key']}#{n}"
        opened = self.ledger.open_case(key, f"{detection.uid}#{n}", detection.model_dump(mode="json"),
                                       pb.name if pb else None)
        self.ledger.append("detection.received", {"detection": detection.summary(),
                                                  "raw_ref": detection.raw_ref.model_dump()},
                           case_id=opened.case_id, actor=detection.actor.user.uid)
        self.ledger.append("case.reopened", {"linked_case": opened.case_id, "detection_uid": detection.uid,
                                             "status": case.get("status")}, case_id=case_id)
        self.ledger.append("case.opened", {"case_key": key, "detection_uid": detection.uid,
                                           "playbook": pb.name if pb else None, "by": process_ref(),
                                           "linked_to": case_id}, case_id=opened.case_id)
        self.ledger.append("case.linked", {"previous_case": case_id, "previous_status": case.get("status")},
                           case_id=opened.case_id)
        if pb is None:
            self.ledger.set_case(opened.case_id, status="no_playbook")
            self.ledger.append("playbook.none", {"reason": "no playbook for the linked case"}, case_id=opened.case_id)
        return CaseTicket(opened.case_id, detection, pb, True, run=pb is not None, reason="reopened")

    @staticmethod
    def _own_call(detection: Detection, records: list[Any]) -> bool:
        """Whether ``detection``'s actor is the identity Cordon acted as on this case (the
        ``cordon_identity`` its guard recorded)."""
        mine = {r.payload.get("cordon_identity") for r in records if r.kind == "guard.passed"} - {None}
        if not mine:
            return False
        provider = get_provider(detection.provider)
        actor = detection.actor.user.uid
        issuer = detection.actor.session_issuer
        return any(str(who).lower() == x.lower() or provider.same_principal(str(who), x)
                   for who in mine for x in (actor, issuer) if x)

    def _joined(self, case_id: str, detection: Detection) -> CaseTicket:
        """The ticket of a joined case: its run is checked first (:func:`cordon.recovery.check_case`);
        a case without a live run is run again (``run`` true, next attempt, the recorded mode)."""
        case = self.ledger.case(case_id) or {}
        pb = self.playbook_named(case.get("playbook"))
        ticket = CaseTicket(case_id, detection, pb, False, run=False, status=case.get("status"))
        if not case:
            return ticket
        check = check_case(self.ledger, case)
        ticket.check = check
        if check.live is False and pb is not None:
            ticket.run, ticket.attempt, ticket.mode = True, check.attempt + 1, check.mode
            ticket.reason = f"recovery: {check.reason}"
            ticket.members = open_members(self.ledger, check)  # an incident's lead answers them again
        return ticket

    def playbook_named(self, name: str | None) -> Playbook | None:
        """The loaded playbook called ``name``, or ``None``."""
        return next((pb for pb in self.playbooks if pb.name == name), None) if name else None

    def ticket_for(self, case_id: str) -> CaseTicket:
        """A ticket for an existing case, with its (redacted) detection from the ledger. Raises
        ``KeyError`` for an unknown case."""
        case = self.ledger.case(case_id)
        if case is None:
            raise KeyError(f"no case {case_id} in {self.ledger.url}")
        detection = Detection.model_validate_json(case["detection"])
        return CaseTicket(case_id, detection, self.playbook_named(case["playbook"]), False, run=False,
                          status=case["status"])

    def claim(self, ticket: CaseTicket, approval: str, where: str, cloud: dict[str, Any] | None,
              slack: dict[str, Any] | None) -> bool:
        """Record the run asked for (``run.requested``, :func:`cordon.recovery.claim_attempt`);
        ``False`` when another process claimed this attempt of the case first."""
        return claim_attempt(self.ledger, ticket.case_id, ticket.attempt, mode=approval, where=where,
                             cloud=self.cloud_for(ticket, cloud), slack=slack, reason=ticket.reason,
                             members=ticket.members or None)

    def delegate(self, lead: CaseTicket, member: CaseTicket) -> None:
        """Record that ``member``'s case is answered by ``lead``'s run (``run.delegated``
        ``{attempt, incident_id, lead_case_id}``): :func:`cordon.recovery.check_case` then judges it
        by the lead's run, and the lead's run requests name it in ``members``."""
        self.ledger.append("run.delegated", {"attempt": member.attempt, "incident_id": member.incident_id,
                                             "lead_case_id": lead.case_id}, case_id=member.case_id, actor="cordon")

    def run(self, ticket: CaseTicket, approval: str = "console", cloud: dict[str, Any] | None = None,
            slack: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run the respond flow for a case in this process and return its summary (``status``
        ``claimed_elsewhere`` when another process owns this attempt of the case).

        For a mode that waits for a click (``slack``, ``teams``, ``both``) use :meth:`submit`
        instead (a suspended run needs a deployment).
        """
        if not ticket.run or ticket.playbook is None:
            return self.summary_without_run(ticket)
        if not self.claim(ticket, approval, IN_PROCESS, cloud, slack):
            return {**self.summary_without_run(ticket), "status": "claimed_elsewhere"}
        from prefect import tags

        respond = respond_flow()
        try:
            with tags(*run_tags(ticket)):
                return respond(case_id=ticket.case_id, playbook=ticket.playbook.name, approval=approval,
                               cloud=self.cloud_for(ticket, cloud), slack=slack, attempt=ticket.attempt,
                               **({"members": ticket.members} if ticket.members else {}))
        except Exception as exc:  # noqa: BLE001 - recorded and reported; the other cases still run
            error = f"{type(exc).__name__}: {exc}"
            self.ledger.append("run.error", {"error": error, "attempt": ticket.attempt}, case_id=ticket.case_id,
                               actor="cordon")
            self.ledger.set_case(ticket.case_id, status="error")
            return {**self.summary_without_run(ticket), "status": "error", "error": error}

    def run_all(self, report: IntakeReport, approval: str = "console", stand_ins: Any = None,
                cloud: dict[str, Any] | None = None, slack: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Run (or, for a mode that waits for a click, ``slack`` / ``teams`` / ``both``, submit)
        every opened case of ``report``; yields each case's summary. With ``stand_ins`` (a
        :class:`cordon.standins.StandIns`, or one started :class:`~cordon.standins.StandIn`), each
        case's detection is seeded in its provider's stand-in first and its run uses that
        stand-in's ``cloud_params()``."""
        stand_ins = as_stand_ins(stand_ins)

        def stand_in(ticket: CaseTicket) -> Any:
            return stand_ins.for_provider(ticket.detection.provider)

        from cordon.recovery import servable

        where = DEPLOYMENT if waits(approval) else IN_PROCESS
        tickets = [*report.cases, *(t for t in report.joined if t.run)]
        skipped: dict[str, str] = {}
        for ticket in tickets:
            if ticket.run and ticket.check is not None:
                why = servable(ticket.check, modes={approval}, where=where, stand_ins=stand_ins is not None)
                if why:
                    skipped[ticket.case_id] = why
        if stand_ins is not None:
            for ticket in tickets:
                if ticket.run and ticket.case_id not in skipped:
                    stand_in(ticket).seed_from_detection(ticket.detection)
        def params_of(ticket: CaseTicket) -> dict[str, Any] | None:
            return stand_in(ticket).cloud_params() if stand_ins is not None and ticket.run else cloud

        # a new case of an incident whose run is still queued joins it (Slack approval: runs on
        # the deployment); then one run for the new cases of one incident: the lead's, naming the
        # others (members)
        queued = self.join_queued(tickets, approval, skipped, params_of) if waits(approval) else {}
        incidents = self.group_incidents([t for t in tickets if t.case_id not in queued], skipped, params_of)
        led = {m.case_id for members in incidents.values() for m in members} | set(queued)
        # every run is asked for before any starts, so a crash part-way leaves each case's
        # approval mode in the ledger for recovery (cordon/recovery.py)
        for ticket in tickets:
            if ticket.run and ticket.playbook is not None and ticket.case_id not in {*skipped, *led}:
                self.claim(ticket, approval, where, params_of(ticket), slack)
        for ticket in tickets:
            if ticket.case_id in skipped:
                yield {**self.summary_without_run(ticket), "status": "stranded", "error": skipped[ticket.case_id]}
                continue
            if ticket.case_id in queued:
                yield self.joined_summary(queued[ticket.case_id], ticket)
                continue
            if ticket.case_id in led:
                continue  # its summary comes with its lead's
            if waits(approval):
                summary = self.submit(ticket, cloud=params_of(ticket), slack=slack, approval=approval)
                yield summary
                for m in incidents.get(ticket.case_id, []):
                    yield self.member_summary(summary, m)
            else:
                summary = self.run(ticket, approval=approval, cloud=params_of(ticket))
                answered = {m["case_id"]: m for m in summary.pop("members", None) or []}
                yield summary
                for m in incidents.get(ticket.case_id, []):
                    yield answered.get(m.case_id) or {**self.summary_without_run(m), "status": summary.get("status"),
                                                      **({"error": summary["error"]} if summary.get("error") else {})}

    def submit_report(self, report: IntakeReport, *, cloud: dict[str, Any] | None = None,
                      slack: dict[str, Any] | None = None, threads: int = 8,
                      approval: str | None = None) -> list[dict[str, Any]]:
        """Answer an intake's new cases on the ``respond`` deployment, asking where ``approval``
        says (default: ``approval.channel`` of ``cordon.yaml``, :func:`cordon.approvals.modes.configured_channel`):
        what the detection webhook and the sensors do with what they received.

        A new case of an incident whose run still waits in the queue joins that run
        (:meth:`join_queued`); the new cases of one actor's incident left are answered by one run,
        its lead's (:meth:`group_incidents`); each lead is submitted (:meth:`submit`), up to
        ``threads`` at once (each a few round trips to Prefect and the ledger), each in a copy of
        this context (Prefect's settings). A joined case whose run is gone (a resent detection after
        a failed submit) is submitted again. Returns one summary per new case in the report's
        order, then the resubmitted joined cases'."""
        from cordon.approvals.modes import configured_channel
        from cordon.recovery import DEPLOYMENT, servable

        approval = approval or configured_channel(self.config)
        queued = self.join_queued(report.cases, approval, params_of=lambda t: cloud)
        fresh = [t for t in report.cases if t.case_id not in queued]
        incidents = self.group_incidents(fresh, params_of=lambda t: cloud)
        members = {m.case_id for group in incidents.values() for m in group}
        leads = [t for t in fresh if t.case_id not in members]
        if len(leads) > 1:
            import contextvars
            from concurrent.futures import ThreadPoolExecutor

            def one(ticket: CaseTicket) -> dict[str, Any]:
                return self.submit(ticket, cloud=cloud, slack=slack, approval=approval)

            runs = [(contextvars.copy_context(), t) for t in leads]
            with ThreadPoolExecutor(min(max(1, threads), len(runs)), thread_name_prefix="cordon-submit") as pool:
                cases = list(pool.map(lambda run: run[0].run(one, run[1]), runs))
        else:
            cases = [self.submit(t, cloud=cloud, slack=slack, approval=approval) for t in leads]
        answered = {c["case_id"]: c for c in cases}
        for c in list(answered.values()):
            answered.update({m.case_id: self.member_summary(c, m) for m in incidents.get(c["case_id"], [])})
        answered.update({t.case_id: self.joined_summary(queued[t.case_id], t)
                         for t in report.cases if t.case_id in queued})
        out = [answered[t.case_id] for t in report.cases]  # the report's order
        for t in report.joined:
            if t.run and t.check is not None and not servable(t.check, modes=(*WAITING_MODES, "auto"),
                                                              where=DEPLOYMENT):
                out.append(self.submit(t, cloud=cloud if cloud is not None else t.check.cloud,
                                       slack=slack, approval=t.mode or approval))
        return out

    def manual(self, playbook: str, params: dict[str, Any], requested_by: dict[str, Any], approval: str = "console",
               stand_ins: Any = None, cloud: dict[str, Any] | None = None,
               slack: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run ``playbook`` by hand with ``params`` (``cordon run``, ``/cordon run``); see
        :func:`cordon.manual.run_manual`. Raises :class:`cordon.manual.ManualRunError`."""
        from cordon.manual import run_manual

        return run_manual(self, playbook, params, requested_by, approval=approval, stand_ins=stand_ins, cloud=cloud,
                          slack=slack)

    def submit(self, ticket: CaseTicket, cloud: dict[str, Any] | None = None, slack: dict[str, Any] | None = None,
               deployment: str = "respond/respond", approval: str = "slack") -> dict[str, Any]:
        """Start the case's run on the ``respond`` deployment (served by ``cordon worker``), with
        :func:`cordon.recovery.idempotency_key` (the case ID for the first attempt) as Prefect's
        ``idempotency_key``, so an attempt never gets two runs. The flow's parameters are a case
        reference (``case_id``, ``playbook``, ``approval``, ``cloud``, ``slack``, ``attempt``):
        never the detection.

        A submission Prefect refuses or cannot take (API unreachable) is recorded as
        ``run.submit_failed`` (the case's status ``submit_failed``) and the summary's ``status``
        says ``submit_failed`` with the ``error``: recovery submits it again later
        (:mod:`cordon.recovery`). ``status`` ``claimed_elsewhere``: another process owns this
        attempt."""
        if not ticket.run or ticket.playbook is None:
            return self.summary_without_run(ticket)
        params_cloud = self.cloud_for(ticket, cloud)
        if not self.claim(ticket, approval, DEPLOYMENT, cloud, slack):
            return {**self.summary_without_run(ticket), "status": "claimed_elsewhere"}
        if ticket.incident_id and ticket.attempt == 1 and self.config.incident_one_run \
                and self.config.incident_join_queued:
            # open before the run exists: its flow seals the row as it starts planning
            self.ledger.open_incident_run(ticket.case_id, 1, ticket.incident_id, mode=approval, where=DEPLOYMENT,
                                          strictness=list(strictness(ticket)),
                                          conflict_keys=ticket.conflict_keys or [k for k in [_conflict_key(ticket)]
                                                                                 if k])
        from cordon.deployments import create_deployment_run

        key = idempotency_key(ticket.case_id, ticket.attempt)
        try:
            fr = create_deployment_run(deployment, parameters={
                "case_id": ticket.case_id, "playbook": ticket.playbook.name, "approval": approval,
                "cloud": params_cloud, "slack": slack, "attempt": ticket.attempt,
                **({"members": ticket.members} if ticket.members else {})},
                idempotency_key=key, tags=run_tags(ticket))
        except Exception as exc:  # noqa: BLE001 - recorded; recovery submits it again
            error = f"{type(exc).__name__}: {exc}"
            self.ledger.append("run.submit_failed", {"attempt": ticket.attempt, "idempotency_key": key,
                                                     "error": error}, case_id=ticket.case_id, actor="cordon")
            self.ledger.set_case(ticket.case_id, status="submit_failed")
            return {**self.summary_without_run(ticket), "status": "submit_failed", "error": error}
        self.ledger.append("run.submitted", {"attempt": ticket.attempt, "idempotency_key": key,
                                             "flow_run_id": str(fr.id)}, case_id=ticket.case_id, run_id=str(fr.id),
                           actor="cordon")
        current = self.ledger.case(ticket.case_id) or {}
        if current.get("flow_run_id") != str(fr.id):  # a new run (not the same one submitted again)
            self.ledger.set_case(ticket.case_id, flow_run_id=str(fr.id), status="submitted")
        return CaseSummary.opened(ticket.case_id, ticket.playbook.name, ticket.detection, flow_run_id=str(fr.id),
                                  approval={"decision": "pending", "approver": None}, attempt=ticket.attempt,
                                  status="awaiting_approval" if waits(approval) else "submitted").out()

    def recover_stranded(self, *, where: str = DEPLOYMENT, modes: Iterable[str] = (*WAITING_MODES, "auto"),
                         stand_ins: Any = None, cloud: dict[str, Any] | None = None,
                         slack: dict[str, Any] | None = None, exclude: Iterable[str] = ()) -> list[Any]:
        """Run again every stranded case of the ledger this caller may serve: by default submit
        the ``slack`` and ``auto`` ones to the ``respond`` deployment (what the worker's sweep and
        ``cordon serve`` at start do). Returns :class:`cordon.recovery.Recovery` items; see
        :func:`cordon.recovery.recover`."""
        from cordon.recovery import recover

        return recover(self, modes=modes, where=where, stand_ins=stand_ins, cloud=cloud, slack=slack,
                       exclude=exclude)

    def rollback(self, case_id: str, clients: Any, who: str) -> list[dict[str, Any]]:
        """Undo the containment of ``case_id``: every ``action.contained`` result in the ledger,
        last first, through its action's rollback (where AWS allows one), with ``clients`` (a
        :func:`cordon.providers.aws.clients.aws_clients` factory). ``who`` is recorded as the actor.

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

    def case_clients(self, case_id: str, cloud: dict[str, Any] | None) -> Any:
        """The client factory a run of ``case_id`` had (:func:`cordon.clouds.clients_for` for
        the detection's provider, with :func:`cordon.clouds.cloud_for_case`: the detection's
        account and the case's STS session name), for rollback. Raises ``KeyError`` for an
        unknown case, ``ValueError`` for a provider without clients and
        :class:`SandboxCaseError` when the case ran against the sandbox (its stand-ins lived only
        as long as the process that ran it: there is nothing in a real cloud to roll back)."""
        from cordon.clouds import clients_for, cloud_for_case

        case = self.ledger.case(case_id)
        if case is None:
            raise KeyError(f"no case {case_id} in {self.ledger.url}")
        if any((r.payload.get("cloud") or {}).get("sandbox")
               for r in self.ledger.records(case_id=case_id, kind_prefix="run.requested")):
            raise SandboxCaseError(f"{case_id} was contained in the sandbox (local stand-ins that lived only as long "
                                   "as the run that used them): there is nothing in a real cloud to roll back")
        detection = Detection.model_validate_json(case["detection"])
        return clients_for(detection.provider, cloud_for_case(cloud, detection, case_id))

    @staticmethod
    def cloud_for(ticket: CaseTicket, cloud: dict[str, Any] | None) -> dict[str, Any]:
        """``cloud`` for this case (:func:`cordon.clouds.cloud_for_case`): the detection's own
        account (AWS, and every provider in the sandbox) and the case ID (the STS session name
        ``cordon-<case>`` when a member role is assumed, :mod:`cordon.providers.aws.accounts`)."""
        from cordon.clouds import cloud_for_case

        return cloud_for_case(cloud, ticket.detection, ticket.case_id)

    @staticmethod
    def summary_without_run(ticket: CaseTicket) -> dict[str, Any]:
        """The summary of a case that gets no run here (no playbook matched, or joined a case
        that is closed or whose run is live)."""
        return CaseSummary.opened(ticket.case_id, ticket.playbook.name if ticket.playbook else None,
                                  ticket.detection,
                                  status="no_playbook" if ticket.playbook is None else "joined_open_case").out()
