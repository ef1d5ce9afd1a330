"""Stranded cases: finding the cases whose run is gone, and running them again.

A case is *stranded* when it is not closed and has no live run: its run was never started (the
process that opened it died, or submitting it to Prefect failed), or the run died (SIGKILL, OOM,
a worker lost while containing, a run that ended FAILED / CRASHED / CANCELLED, or COMPLETED
without closing the case). The ledger is the truth: these records say who asked for which run,
and :func:`check_case` reads them (and Prefect, for deployment runs) to decide whether a run is
live:

``case.opened`` ``{"by": process}``
    the process that opened the case (:func:`process_ref`).
``run.requested`` ``{"attempt", "mode", "where", "idempotency_key", "by", "cloud", "slack", "reason"}``
    a run asked for: ``mode`` the approval mode (``auto``, ``console``, ``slack``), ``where``
    ``in_process`` (``cordon respond``/``run``: the flow runs in the requesting process) or
    ``deployment`` (the ``respond`` deployment: ``cordon worker`` / ``prefect worker``). The first
    ``run.requested`` of an attempt (lowest ``seq``) owns it: a second process that claims the same
    attempt at the same moment loses (:func:`claim_attempt`), so replicas never start two runs.
``run.submitted`` ``{"attempt", "flow_run_id", "idempotency_key"}`` / ``run.submit_failed`` ``{"attempt", "error"}``
    the deployment run Prefect made (idempotency key ``<case>`` for attempt 1,
    ``<case>:attempt-<n>`` after), or why it could not.
``run.process`` ``{"attempt", "by": process}``
    written by the flow each time a process starts executing it (again after a resume), so a
    RUNNING deployment run can be tied to the process running it.
``run.presumed_dead`` ``{"attempt", "flow_run_id", "state", "reason"}``
    recovery decided a run Prefect still calls PENDING/RUNNING is dead (and set it CRASHED).
``recovery.gave_up`` ``{"attempts", "reason"}``
    :data:`MAX_ATTEMPTS` runs started and none closed the case: it stays stranded for a person.

Liveness rules (:func:`check_case`), for the newest attempt:

* in-process run: live while the requesting process is (same host: ``/proc/<pid>`` with the same
  start time and not a zombie; another host: while the case had a ledger record in the last
  :data:`STALE_SECONDS`);
* deployment run: by its Prefect state. SCHEDULED (incl. Late, AwaitingRetry), PAUSED (incl.
  Suspended: waiting for approval survives any worker) and CANCELLING are live; COMPLETED,
  FAILED, CRASHED, CANCELLED are final, so the case (not closed) is stranded; PENDING and RUNNING
  are live while the process in the newest ``run.process`` record is (as above), or, with no
  process record yet for this state, for :data:`START_GRACE_SECONDS` only (a runner that claimed
  the run, PENDING, and died before starting it leaves it PENDING forever: stranded after the grace).
  A ``run.process`` written before the run's last resume (:func:`last_resume`: an
  ``approval.decision_received``, or a claim being delivered, later in the ledger) is the process
  that ran it up to its suspension: its death proves nothing, so a run just resumed (SCHEDULED,
  then PENDING/RUNNING before its new process records itself) gets the grace, not a verdict on
  the process that suspended it (while that process is still running, the run is live).
  Prefect unreachable: *unknown*, nothing is done;
* no run requested: live while the process that opened the case is.

Who recovers what (:func:`recover`): a case is run again with its recorded approval mode, never a
weaker one: ``cordon respond --approve M`` re-runs (in process) the stranded cases recorded with
mode ``M``; the worker's sweep (``cordon/flows/sweeper.py``) and ``cordon serve`` at start submit the
``slack`` and ``auto`` cases to the ``respond`` deployment. A case whose mode is unknown (its
opener died before requesting a run) is taken only by a path where a person approves (``slack``,
``console``). An in-process sandbox run (``cloud.sandbox``) is re-run only by ``cordon respond
--sandbox`` (its stand-ins died with it). Containment actions are idempotent
(``already_contained``), and the flow writes ``step.started`` before each containment call, so a
re-run after a crash mid-call says so (``action.already_contained`` with ``interrupted``).

Settings: ``CORDON_RECOVERY_MAX_ATTEMPTS`` (default 3), ``CORDON_RECOVERY_STALE_SECONDS``
(default 900), ``CORDON_RECOVERY_START_GRACE_SECONDS`` (default 120).
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from cordon.audit.ledger import Ledger, LedgerRecord, cases_table
from cordon.standins import as_stand_ins

if TYPE_CHECKING:  # pragma: no cover
    from cordon.engine import Responder

#: Case statuses after which a case needs no run (``case.closed`` was written, or none is due).
CLOSED_STATUSES = frozenset({"contained", "denied", "expired", "refused", "no_containment", "failed",
                             "not_verified", "no_playbook", "rolled_back", "plan_changed", "already_contained",
                             "awaiting_manual"})
#: Record kinds that close a case.
CLOSING_KINDS = frozenset({"case.closed", "playbook.none"})
#: Prefect state types of a run that is, or will be, running.
LIVE_STATES = frozenset({"SCHEDULED", "PAUSED", "CANCELLING"})
#: Prefect state types whose liveness depends on the process running the flow.
PROCESS_STATES = frozenset({"PENDING", "RUNNING"})
#: Final Prefect state types.
FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
#: Approval modes in which a person approves (they may take a case whose mode is unknown).
HUMAN_MODES = frozenset({"slack", "teams", "both", "console"})

IN_PROCESS = "in_process"
DEPLOYMENT = "deployment"


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


#: Runs started (or submits failed) before recovery gives up on a case
#: (``CORDON_RECOVERY_MAX_ATTEMPTS``, read at each use: :func:`max_attempts`).
MAX_ATTEMPTS = 3
#: A run on another host is presumed dead when its case had no ledger record for this long, in
#: seconds (``CORDON_RECOVERY_STALE_SECONDS``: :func:`stale_seconds`).
STALE_SECONDS = 900
#: How long a PENDING/RUNNING deployment run may go without a ``run.process`` record, in seconds
#: (``CORDON_RECOVERY_START_GRACE_SECONDS``: :func:`start_grace_seconds`).
START_GRACE_SECONDS = 120


def max_attempts() -> int:
    """:data:`MAX_ATTEMPTS`, or ``CORDON_RECOVERY_MAX_ATTEMPTS``."""
    return _env_int("CORDON_RECOVERY_MAX_ATTEMPTS", MAX_ATTEMPTS)


def stale_seconds() -> int:
    """:data:`STALE_SECONDS`, or ``CORDON_RECOVERY_STALE_SECONDS``."""
    return _env_int("CORDON_RECOVERY_STALE_SECONDS", STALE_SECONDS)


def start_grace_seconds() -> int:
    """:data:`START_GRACE_SECONDS`, or ``CORDON_RECOVERY_START_GRACE_SECONDS``."""
    return _env_int("CORDON_RECOVERY_START_GRACE_SECONDS", START_GRACE_SECONDS)


# -- processes ------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """``(state, starttime)`` of ``pid`` from ``/proc/<pid>/stat`` (Linux), ``None`` if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = text[text.rfind(")") + 2:].split()  # after "(comm)": state is field 3, starttime 22
    return (fields[0], fields[19]) if len(fields) > 19 else None


def process_ref(pid: int | None = None) -> dict[str, Any]:
    """Who this process is, durably: ``{"host", "boot_id", "pid", "pid_started"}`` (``boot_id``
    from ``/proc/sys/kernel/random/boot_id``, ``pid_started`` the process's start time in clock
    ticks since boot from ``/proc/<pid>/stat``; both ``None`` off Linux)."""
    pid = os.getpid() if pid is None else pid
    stat = _proc_stat(pid)
    return {"host": socket.gethostname(), "boot_id": _boot_id(), "pid": pid,
            "pid_started": stat[1] if stat else None}


def process_alive(ref: dict[str, Any] | None) -> bool | None:
    """Whether the process :func:`process_ref` described is still running: ``True``/``False``
    on the same host (the same boot, the pid with the same start time, not a zombie), ``None``
    when it ran on another host (or ``ref`` says nothing)."""
    if not ref or not ref.get("pid"):
        return None
    if ref.get("host") != socket.gethostname():
        return None
    if ref.get("boot_id") and _boot_id() and ref["boot_id"] != _boot_id():
        return False  # this host rebooted since
    stat = _proc_stat(int(ref["pid"]))
    if stat is None:
        if Path("/proc/self/stat").exists():
            return False
        try:  # no /proc: the best the OS offers
            os.kill(int(ref["pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    state, started = stat
    if state in ("Z", "X", "x"):
        return False
    return not ref.get("pid_started") or ref["pid_started"] == started


# -- Prefect ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunState:
    """A flow run's state as Prefect reports it: ``type`` (``RUNNING`` ...), ``name`` and the
    time it was entered; ``type`` is ``MISSING`` when Prefect has no such run."""

    type: str
    name: str | None = None
    timestamp: datetime | None = None


class PrefectUnavailable(RuntimeError):
    """Prefect's API did not answer (the run's liveness is unknown)."""


def prefect_state(flow_run_id: str) -> RunState:
    """The state of ``flow_run_id`` from the Prefect API at ``PREFECT_API_URL``
    (``GET /flow_runs/{id}``). Raises :class:`PrefectUnavailable` when the API cannot be reached
    or no ``PREFECT_API_URL`` is set (``cordon respond`` without one runs flows on a temporary
    server that knows no deployment run)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        # without it Prefect would answer from a temporary server of its own, which never has the run
        raise PrefectUnavailable("PREFECT_API_URL is not set: the Prefect server that runs the deployment is unknown")
    try:
        with get_client(sync_client=True) as client:
            fr = client.read_flow_run(flow_run_id)
    except ObjectNotFound:
        return RunState("MISSING")
    except Exception as exc:  # noqa: BLE001 - connection refused, timeouts, 5xx
        raise PrefectUnavailable(f"{type(exc).__name__}: {exc}") from exc
    if fr.state is None:
        return RunState("SCHEDULED")
    ts = fr.state.timestamp
    return RunState(fr.state.type.value, fr.state.name, ts if isinstance(ts, datetime) else None)


def mark_crashed(flow_run_id: str, message: str) -> None:
    """Set a run Prefect still calls PENDING/RUNNING to CRASHED (forced), so its state says what
    the ledger says. Errors are ignored: the ledger record is what counts."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    try:
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(flow_run_id, Crashed(message=message), force=True)
    except Exception:  # noqa: BLE001,S110 - best effort
        pass


# -- reading a case --------------------------------------------------------------------------
@dataclass(frozen=True)
class RunCheck:
    """What :func:`check_case` found for one case.

    ``live``: ``True`` (a run is live or coming), ``False`` (stranded), ``None`` (cannot tell:
    Prefect did not answer). ``attempt`` is the newest attempt (0: none requested), ``started``
    how many attempts started a run (or failed to submit one), ``mode``/``where``/``cloud``/
    ``slack`` what the newest ``run.requested`` recorded, ``flow_run_id``/``state`` its run,
    ``reason`` one sentence, ``gave_up`` whether ``recovery.gave_up`` was recorded.
    """

    case_id: str
    live: bool | None
    reason: str
    status: str
    playbook: str | None = None
    opened_at: str | None = None
    attempt: int = 0
    started: int = 0
    mode: str | None = None
    where: str | None = None
    flow_run_id: str | None = None
    state: str | None = None
    cloud: dict[str, Any] | None = None
    slack: dict[str, Any] | None = None
    gave_up: bool = False
    #: the incident members the newest run request of this (lead) case also answers
    members: list[dict[str, Any]] | None = None
    #: the lead case whose run answers this one (an incident member), if any
    lead_case_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``cordon audit list --stranded --output json``); ``cloud``/``slack``/``members`` left out."""
        d = asdict(self)
        d.pop("cloud")
        d.pop("slack")
        d.pop("members")
        d["recovered_by"] = recovered_by(self)
        return d


def recovered_by(check: RunCheck) -> str:
    """Who will run ``check``'s case again (one phrase, for people)."""
    if check.gave_up or check.started >= max_attempts():
        return f"nobody: gave up after {check.started} attempt(s); see `cordon audit show {check.case_id}`"
    sandbox = bool((check.cloud or {}).get("sandbox")) and check.where == IN_PROCESS
    if check.mode is None:
        return "the worker's sweep or `cordon serve` (Slack approval), or `cordon respond --approve console`"
    if sandbox:
        return f"`cordon respond --sandbox --approve {check.mode}`"
    if check.mode == "console":
        return "`cordon respond --approve console`"
    return f"the worker's sweep, `cordon serve` at start, or `cordon respond --approve {check.mode}`"


def _parse_ts(ts: str | None) -> datetime | None:
    if not ts:
        return None
    try:
        dt = datetime.fromisoformat(ts)
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _quiet_for(records: list[LedgerRecord], now: datetime) -> float:
    last = _parse_ts(records[-1].ts) if records else None
    return (now - last).total_seconds() if last else float("inf")


def last_resume(records: list[LedgerRecord], run_id: str) -> LedgerRecord | None:
    """The newest record of ``run_id`` saying it was resumed after an approval wait, or is being
    resumed: ``approval.decision_received`` with ``resumed: true``, or a claim
    (``approval.decision``) that no ``approval.resume_failed`` / ``approval.decision_lost``
    answers (its owner writes the claim before asking Prefect, and ``decision_received`` after).
    ``None`` when the run was never resumed."""
    from cordon.approvals.gate import CLAIM_KIND, LOST_KIND, RESUME_FAILED_KIND, RESUMED_KIND

    mine = [r for r in records if r.run_id == run_id]
    answered = {r.payload.get("decision_seq") for r in mine if r.kind in (RESUME_FAILED_KIND, LOST_KIND)}
    marks = [r for r in mine if (r.kind == RESUMED_KIND and r.payload.get("resumed") is True)
             or (r.kind == CLAIM_KIND and r.seq not in answered)]
    return max(marks, key=lambda r: r.seq, default=None)


def _process_verdict(ref: dict[str, Any] | None, records: list[LedgerRecord], now: datetime,
                     what: str) -> tuple[bool, str]:
    alive = process_alive(ref)
    if alive is True:
        return True, f"{what} (pid {ref['pid']}) is running"
    if alive is False:
        return False, f"{what} (pid {ref['pid']} on {ref.get('host')}) is gone"
    quiet = _quiet_for(records, now)
    where = f"on {ref.get('host')}" if ref else "elsewhere"
    if quiet < stale_seconds():
        return True, f"{what} runs {where} (last ledger record {quiet:.0f} s ago)"
    return False, f"{what} runs {where} and the case has been quiet for {quiet:.0f} s (presumed dead)"


def check_case(ledger: Ledger, case: dict[str, Any], *, records: list[LedgerRecord] | None = None,
               state_of: Callable[[str], RunState] = prefect_state, now: datetime | None = None) -> RunCheck:
    """Decide whether ``case`` (a ``cases`` row as a dict) has a live run; see the module doc for
    the rules. ``records`` are the case's ledger records (read if not given), ``state_of`` reads a
    deployment run's Prefect state (:func:`prefect_state`), ``now`` an aware datetime."""
    now = now or datetime.now(UTC)
    case_id = case["case_id"]
    if records is None:
        records = list(ledger.records(case_id=case_id))
    base = {"case_id": case_id, "status": case["status"], "playbook": case.get("playbook"),
            "opened_at": case.get("opened_at")}
    if case["status"] in CLOSED_STATUSES or any(r.kind in CLOSING_KINDS for r in records):
        return RunCheck(live=True, reason="closed", **base)
    requests = [r for r in records if r.kind == "run.requested"]
    delegated = [r for r in records if r.kind == "run.delegated"]
    if delegated and (not requests or delegated[-1].seq > requests[-1].seq):
        return _check_member(ledger, case, delegated[-1], base, records, state_of, now)
    attempt = max((int(r.payload.get("attempt") or 1) for r in requests), default=0)
    started_attempts = {int(r.payload.get("attempt") or 1) for r in records
                        if r.kind in ("run.submitted", "run.submit_failed", "run.process")}
    started_attempts |= {1 for r in records if r.kind == "run.started" and not requests}
    gave_up = any(r.kind == "recovery.gave_up" for r in records)
    if not requests:
        legacy = [r for r in records if r.kind == "run.started"]
        if legacy:  # a run from before run.requested existed: only the staleness rule can judge it
            mode = legacy[-1].payload.get("approval_mode")
            live, why = _process_verdict(None, records, now, "its run")
            return RunCheck(live=live, reason=why, attempt=1, started=1, mode=mode, flow_run_id=case.get("flow_run_id"),
                            gave_up=gave_up, **base)
        opened = next((r for r in records if r.kind == "case.opened"), None)
        live, why = _process_verdict((opened.payload.get("by") if opened else None), records, now,
                                     "the process that opened it")
        return RunCheck(live=live, reason=("no run requested yet; " if live else "no run was ever requested: ") + why,
                        gave_up=gave_up, **base)
    owner = min((r for r in requests if int(r.payload.get("attempt") or 1) == attempt), key=lambda r: r.seq)
    req = owner.payload
    common = {**base, "attempt": attempt, "started": len(started_attempts), "mode": req.get("mode"),
              "where": req.get("where"), "cloud": req.get("cloud"), "slack": req.get("slack"), "gave_up": gave_up,
              "members": _members_of(req, records)}
    of_attempt = [r for r in records if int(r.payload.get("attempt") or 0) == attempt]
    failed = [r for r in of_attempt if r.kind == "run.submit_failed"]
    if failed:
        return RunCheck(live=False, reason=f"submitting attempt {attempt} failed: {failed[-1].payload.get('error')}",
                        **common)
    if any(r.kind == "run.presumed_dead" for r in of_attempt):
        return RunCheck(live=False, reason=f"attempt {attempt}'s run was presumed dead", **common)
    errors = [r for r in records if r.kind == "run.error" and r.seq > owner.seq
              and r.payload.get("attempt") in (None, attempt)]
    if errors:
        p = errors[-1].payload
        return RunCheck(live=False, reason=f"attempt {attempt}'s run failed: {p.get('message') or p.get('error')}",
                        flow_run_id=errors[-1].run_id, **common)
    if req.get("where") != DEPLOYMENT:
        live, why = _process_verdict(req.get("by"), records, now, "the process running it")
        return RunCheck(live=live, reason=why, **common)
    submitted = [r for r in of_attempt if r.kind == "run.submitted"]
    if not submitted:
        live, why = _process_verdict(req.get("by"), records, now, "the process submitting it")
        return RunCheck(live=live, reason=("being submitted: " if live else "never submitted: ") + why, **common)
    run_id = str(submitted[-1].payload["flow_run_id"])
    try:
        st = state_of(run_id)
    except PrefectUnavailable as exc:
        return RunCheck(live=None, reason=f"cannot read run {run_id} from Prefect: {exc}", flow_run_id=run_id,
                        **common)
    common.update(flow_run_id=run_id, state=st.type)
    if st.type in LIVE_STATES:
        return RunCheck(live=True, reason=f"run {run_id} is {st.name or st.type}", **common)
    if st.type == "MISSING":
        return RunCheck(live=False, reason=f"Prefect has no run {run_id}", **common)
    if st.type in FINAL_STATES:
        return RunCheck(live=False, reason=f"run {run_id} ended {st.name or st.type} without closing the case",
                        **common)
    # a process recorded before the run's last resume ran it up to its suspension and exited:
    # it says nothing of the process the resumed run gets (ledger order, no clocks compared)
    resumed = last_resume(records, run_id)
    since = st.timestamp or (_parse_ts(resumed.ts) if resumed else None)
    procs = [r for r in records if r.kind == "run.process" and r.run_id == run_id]
    earlier = [r for r in procs if resumed is not None and r.seq < resumed.seq]
    procs = [r for r in procs if resumed is None or r.seq > resumed.seq]
    current = [r for r in procs if since is None or (_parse_ts(r.ts) or now).timestamp() >= since.timestamp() - 5]
    if current:
        live, why = _process_verdict(current[-1].payload.get("by"), records, now, f"run {run_id}'s process")
        return RunCheck(live=live, reason=why, **common)
    waited = (now - since).total_seconds() if since else 0.0
    if earlier and process_alive(earlier[-1].payload.get("by")) is True and waited < start_grace_seconds():
        # still running it, or still exiting; a warm worker (cordon/runner.py) outlives its runs, so
        # this holds only for the grace: after it, the resumed run's own process must have said so
        return RunCheck(live=True, reason=f"run {run_id} is {st.type}; the process that ran it before its resume "
                                          f"(pid {earlier[-1].payload['by']['pid']}) is running", **common)
    if waited < start_grace_seconds():
        after = " after its resume" if resumed else ""
        return RunCheck(live=True, reason=f"run {run_id} is {st.type}{after}, its process starting ({waited:.0f} s)",
                        **common)
    # PENDING/RUNNING past the grace and no process ever recorded itself: the runner that claimed it
    # died before starting it (Prefect keeps such a run PENDING forever; no runner takes it again)
    return RunCheck(live=False, reason=f"run {run_id} is {st.type} for {waited:.0f} s and no process recorded "
                                       f"itself (its runner died before starting it)", **common)


def _check_member(ledger: Ledger, case: dict[str, Any], delegated: LedgerRecord, base: dict[str, Any],
                  records: list[LedgerRecord], state_of: Callable[[str], RunState], now: datetime) -> RunCheck:
    """An incident member (``run.delegated`` is its newest run record): live while its lead's run
    is, or while its lead waits to be run again (recovery runs the lead with its members: the
    member is never run twice); stranded once the lead is closed without closing it (then it is
    run on its own, the next attempt)."""
    lead_id = str(delegated.payload.get("lead_case_id"))
    attempt = int(delegated.payload.get("attempt") or 1)
    lead = ledger.case(lead_id)
    gave_up = any(r.kind == "recovery.gave_up" for r in records)
    own = {**base, "attempt": attempt, "started": attempt, "gave_up": gave_up, "lead_case_id": lead_id}
    if lead is None:
        return RunCheck(live=False, reason=f"its incident's lead case {lead_id} is not in the ledger", **own)
    check = check_case(ledger, lead, state_of=state_of, now=now)
    mode_etc = {"mode": check.mode, "where": check.where, "cloud": _member_cloud(check, case["case_id"]),
                "slack": check.slack, "flow_run_id": check.flow_run_id, "state": check.state}
    if check.reason == "closed":
        return RunCheck(live=False, reason=f"its incident's lead case {lead_id} closed without closing it",
                        **own, **mode_etc)
    return RunCheck(live=True, reason=f"answered by the run of its incident's lead case {lead_id}: {check.reason}",
                    **own, **mode_etc)


def _members_of(request: dict[str, Any], records: list[LedgerRecord]) -> list[dict[str, Any]] | None:
    """The members a lead's runs answer: those its run request named, then those that joined its
    queued runs (``run.sealed``, :meth:`cordon.audit.ledger.Ledger.seal_incident_run`)."""
    out = list(request.get("members") or [])
    seen = {m.get("case_id") for m in out}
    for r in records:
        if r.kind == "run.sealed":
            for m in r.payload.get("members") or []:
                if m.get("case_id") not in seen:
                    seen.add(m.get("case_id"))
                    out.append(m)
    return out or None


def _member_cloud(lead: RunCheck, case_id: str) -> dict[str, Any] | None:
    for m in lead.members or []:
        if m.get("case_id") == case_id:
            return m.get("cloud") or lead.cloud
    return lead.cloud


def open_members(ledger: Ledger, check: RunCheck) -> list[dict[str, Any]]:
    """The incident members a stranded lead's next run answers too: those its newest run request
    named (``members``) that are still open (``[{"case_id", "playbook", "cloud"}]``)."""
    if not check.members:
        return []
    still = {c["case_id"] for c in open_cases(ledger, [m["case_id"] for m in check.members])}
    return [m for m in check.members if m["case_id"] in still]


def open_cases(ledger: Ledger, case_ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Rows of the cases not in :data:`CLOSED_STATUSES` (oldest first; only ``case_ids`` if given)."""
    q = (sa.select(cases_table.c.case_id, cases_table.c.case_key, cases_table.c.opened_at, cases_table.c.playbook,
                   cases_table.c.status, cases_table.c.flow_run_id)
         .where(cases_table.c.status.notin_(sorted(CLOSED_STATUSES))).order_by(cases_table.c.opened_at))
    if case_ids is not None:
        q = q.where(cases_table.c.case_id.in_(list(case_ids)))
    with ledger.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(q)]


def find_stranded(ledger: Ledger, *, case_ids: Iterable[str] | None = None,
                  state_of: Callable[[str], RunState] = prefect_state, include_unknown: bool = False,
                  now: datetime | None = None) -> list[RunCheck]:
    """Every stranded case (``live is False``; with ``include_unknown`` also those whose run
    Prefect could not report), oldest first. Prefect is asked only about deployment runs of
    cases not closed; each run once."""
    out = []
    cache: dict[str, RunState] = {}

    def cached(run_id: str) -> RunState:
        if run_id not in cache:
            cache[run_id] = state_of(run_id)
        return cache[run_id]

    for case in open_cases(ledger, case_ids):
        check = check_case(ledger, case, state_of=cached, now=now)
        if check.live is False or (include_unknown and check.live is None):
            out.append(check)
    return out


# -- claiming and recovering -----------------------------------------------------------------
def idempotency_key(case_id: str, attempt: int) -> str:
    """Prefect's idempotency key of a case's deployment run: the case ID for attempt 1 (as
    always), ``<case>:attempt-<n>`` for later attempts."""
    return case_id if attempt <= 1 else f"{case_id}:attempt-{attempt}"


def claim_attempt(ledger: Ledger, case_id: str, attempt: int, *, mode: str, where: str,
                  cloud: dict[str, Any] | None, slack: dict[str, Any] | None, reason: str,
                  members: list[dict[str, Any]] | None = None) -> bool:
    """Append ``run.requested`` for ``attempt`` of ``case_id`` unless this process already did,
    then read the case back: ``True`` when this process owns the attempt (its record is the
    first for that attempt), ``False`` when another process claimed it first. ``members``: the
    other cases of its incident the run answers (``[{"case_id", "playbook", "cloud"}]``), kept in
    the record so a run of the lead started again answers them too."""
    me = process_ref()

    def mine(r: LedgerRecord) -> bool:
        by = r.payload.get("by") or {}
        return all(by.get(k) == me[k] for k in ("host", "pid", "pid_started"))

    def first() -> LedgerRecord | None:
        same = [r for r in ledger.records(case_id=case_id, kind_prefix="run.requested")
                if int(r.payload.get("attempt") or 1) == attempt]
        return min(same, key=lambda r: r.seq) if same else None

    owner = first()
    if owner is None:
        ledger.append("run.requested", {"attempt": attempt, "mode": mode, "where": where,
                                        "idempotency_key": idempotency_key(case_id, attempt), "by": me,
                                        "cloud": cloud or {}, "slack": slack, "reason": reason,
                                        **({"members": members} if members else {})},
                      case_id=case_id, actor="cordon")
        owner = first()
    return owner is not None and mine(owner)


@dataclass(frozen=True)
class Recovery:
    """What :func:`recover` did for one stranded case: ``action`` is ``rerun`` (in process),
    ``submitted``, ``skipped`` (not this caller's to run, or given up on earlier: ``reason`` says
    which), ``gave_up`` (this call recorded ``recovery.gave_up``) or ``lost`` (another process
    claimed the attempt first); ``summary`` the run's summary."""

    case_id: str
    action: str
    reason: str
    attempt: int = 0
    summary: dict[str, Any] | None = None


def servable(check: RunCheck, *, modes: Iterable[str], where: str, stand_ins: bool = False) -> str | None:
    """``None`` when a caller running ``modes`` ``where`` (``in_process`` / ``deployment``), with
    local stand-ins or not, may run ``check``'s case again, else why not."""
    modes = set(modes)
    mode = check.mode
    if mode is None:
        if not modes & HUMAN_MODES:
            return "its approval mode is unknown: only a path where a person approves may take it"
    elif mode not in modes:
        return f"recorded with --approve {mode}"
    was_sandbox = bool((check.cloud or {}).get("sandbox")) and check.where == IN_PROCESS
    if was_sandbox and not (where == IN_PROCESS and stand_ins):
        return "an in-process sandbox run: only `cordon respond --sandbox` re-creates its stand-ins"
    if where == DEPLOYMENT and mode == "console":
        return "console approval needs `cordon respond --approve console`"
    return None


def recover(responder: Responder, *, modes: Iterable[str], where: str, stand_ins: Any = None,
            cloud: dict[str, Any] | None = None, slack: dict[str, Any] | None = None,
            case_ids: Iterable[str] | None = None, exclude: Iterable[str] = (),
            state_of: Callable[[str], RunState] = prefect_state) -> list[Recovery]:
    """Run every stranded case this caller may serve (:func:`servable`) again, one attempt
    more, idempotently: ``where="in_process"`` runs the flow here (``cordon respond``; with
    ``stand_ins``, a :class:`cordon.standins.StandIns`, seeded from the case's detection first),
    ``where="deployment"`` submits it to the ``respond`` deployment (the sweep, ``cordon serve``).
    ``cloud``/``slack`` override the recorded ones (the recorded ones are used when ``None``).
    A case whose runs started :data:`MAX_ATTEMPTS` times gets one ``recovery.gave_up`` record and
    is left stranded. ``exclude`` names cases the caller handles itself."""
    out: list[Recovery] = []
    excluded = set(exclude)
    for check in find_stranded(responder.ledger, case_ids=case_ids, state_of=state_of):
        if check.case_id in excluded:
            continue
        why = servable(check, modes=modes, where=where, stand_ins=stand_ins is not None)
        if why:
            out.append(Recovery(check.case_id, "skipped", why, check.attempt))
            continue
        out.append(rerun(responder, check, where=where, stand_ins=stand_ins, cloud=cloud, slack=slack,
                         modes=modes))
    return out


def rerun(responder: Responder, check: RunCheck, *, where: str, modes: Iterable[str], stand_ins: Any = None,
          cloud: dict[str, Any] | None = None, slack: dict[str, Any] | None = None,
          ticket: Any = None) -> Recovery:
    """Run ``check``'s case again (see :func:`recover`); ``ticket`` is the engine's
    :class:`~cordon.engine.CaseTicket` when the caller has one (a detection joined the case)."""
    ledger = responder.ledger
    if check.gave_up:
        return Recovery(check.case_id, "skipped", "recovery gave up on it earlier (recovery.gave_up)", check.attempt)
    if check.started >= max_attempts():
        ledger.append("recovery.gave_up", {"attempts": check.started, "reason": check.reason},
                      case_id=check.case_id, actor="cordon")
        return Recovery(check.case_id, "gave_up", f"{check.started} attempt(s) started; last: {check.reason}",
                        check.attempt)
    if check.where == DEPLOYMENT and check.state in PROCESS_STATES and check.flow_run_id:
        ledger.append("run.presumed_dead", {"attempt": check.attempt, "flow_run_id": check.flow_run_id,
                                            "state": check.state, "reason": check.reason},
                      case_id=check.case_id, run_id=check.flow_run_id, actor="cordon")
        mark_crashed(check.flow_run_id, f"presumed dead by Cordon's recovery: {check.reason}")
    mode = check.mode or next(m for m in ("slack", "teams", "both", "console") if m in set(modes))
    ticket = ticket or responder.ticket_for(check.case_id)
    ticket.members = open_members(ledger, check)
    ticket.run = True
    ticket.attempt = check.attempt + 1
    ticket.reason = f"recovery: {check.reason}"
    run_cloud = cloud if cloud is not None else (check.cloud or {})
    run_slack = slack if slack is not None else check.slack
    if where == DEPLOYMENT:
        summary = responder.submit(ticket, cloud=run_cloud, slack=run_slack, approval=mode)
        action = "submitted"
    else:
        if stand_ins is not None:
            stand_in = as_stand_ins(stand_ins).for_provider(ticket.detection.provider)
            stand_in.seed_from_detection(ticket.detection)
            run_cloud = stand_in.cloud_params()
        summary = responder.run(ticket, approval=mode, cloud=run_cloud, slack=run_slack)
        action = "rerun"
    if summary.get("status") == "claimed_elsewhere":
        action = "lost"
    return Recovery(check.case_id, action, check.reason, ticket.attempt, summary)
