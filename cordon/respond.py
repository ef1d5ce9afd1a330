"""The steps of a response, as plain functions beneath the Prefect flow in ``cordon/flows/respond.py``.

The flow orders these steps, waits and retries; everything here is testable without Prefect:

* :func:`enrich`: run the playbook's enrichment actions, each failure recorded, never fatal;
* :func:`guard`: refuse protected principals, Cordon's own identity, and any step whose
  parameters do not name the detection's exact credential;
* :func:`build_plan`: render every containment step and read the current state to list the exact
  API calls it would make, hashed so an approval is bound to this plan and no other;
* :func:`contain`, :func:`verify`, :func:`rollback_results`;
* :class:`CaseSummary`: what a run says about its case at the end, built here and nowhere else.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cordon.action import ActionContext, ActionResult, ContainmentAction, EnrichmentAction, GuardError, get_action
from cordon.config import Config
from cordon.detections.model import Detection, canonical_json
from cordon.playbooks.schema import Playbook, render_params, template_context
from cordon.providers import get_provider


class PlanStep(BaseModel):
    """One containment step with its parameters rendered and its effect read from the cloud:
    ``calls`` are the exact mutating API calls ``run`` would make now (empty when the credential
    is already contained)."""

    action: str
    params: dict[str, Any]
    target: str
    before: dict[str, Any] | None = None
    calls: list[dict[str, Any]] = Field(default_factory=list)
    describe: list[str] = Field(default_factory=list)
    rollback_supported: bool = False
    #: the member case the step answers, in an incident's plan (``None``: the plan's own case)
    case_id: str | None = None


class Plan(BaseModel):
    """The containment plan for one case; ``hash`` binds approvals to exactly these steps.

    An incident's plan (one actor's burst, answered by one run and one approval) is its lead case's:
    every member's steps, each with its ``case_id``, and ``incident`` ``{incident_id, actor_key,
    cases: [{case_id, playbook, event_name, credential}]}`` for the approval message (what the
    steps name is hashed; ``incident`` is what is shown)."""

    case_id: str
    playbook: str
    steps: list[PlanStep]
    hash: str
    incident: dict[str, Any] | None = None


class CaseSummary(BaseModel):
    """What Cordon says about a case once a run (or the lack of one) is over: the line
    ``cordon respond --output json`` prints, the flow run's result, the Slack message's source.

    ``status``: ``contained`` | ``already_contained`` | ``not_verified`` | ``failed`` | ``denied`` | ``expired`` |
    ``refused``
    | ``no_containment`` | ``plan_changed`` | ``replanning`` | ``awaiting_approval`` | ``submitted`` |
    ``submit_failed`` | ``error`` | ``stranded`` | ``claimed_elsewhere`` | ``no_playbook`` |
    ``joined_open_case``; ``detection`` is
    :meth:`cordon.detections.model.Detection.summary`; ``approval`` ``{decision, approver, ...}``;
    ``plan`` ``{hash, steps: [{action, target, calls}]}`` once planned. Other keys a step adds
    (``guard``, ``verification``, ``rollback``, ``attempt``, ``error``) are kept (``extra="allow"``).
    Build one with :meth:`opened`; :meth:`out` is the JSON-ready dict."""

    model_config = ConfigDict(extra="allow")

    case_id: str
    playbook: str | None
    flow_run_id: str | None = None
    detection: dict[str, Any]
    enrichment: dict[str, Any] | None = None
    approval: dict[str, Any] = Field(default_factory=lambda: {"decision": None, "approver": None})
    actions: list[dict[str, Any]] = Field(default_factory=list)
    verified: bool | None = None
    plan: dict[str, Any] | None = None
    status: str | None = None

    @classmethod
    def opened(cls, case_id: str, playbook: str | None, detection: Detection, **fields: Any) -> CaseSummary:
        """The summary of ``case_id`` before anything happened to it; ``fields`` set the rest
        (``status``, ``flow_run_id``, ``approval``, ``attempt``, ...)."""
        return cls(case_id=case_id, playbook=playbook, detection=detection.summary(), **fields)

    def with_plan(self, plan: Plan) -> CaseSummary:
        """The summary showing ``plan`` (hash and each step's action, target and API calls)."""
        self.plan = {"hash": plan.hash, "steps": [{"action": s.action, "target": s.target, "calls": s.describe}
                                                   for s in plan.steps]}
        return self

    def out(self) -> dict[str, Any]:
        """The summary as a JSON-ready dict (``None``-valued optional keys of a run left out:
        ``enrichment`` and ``plan`` appear once the run reached them)."""
        data = self.model_dump(mode="json")
        for key in ("enrichment", "plan", "flow_run_id"):
            if data.get(key) is None and key not in self.model_fields_set:
                data.pop(key, None)
        return data


class GuardOutcome(BaseModel):
    """``ok`` or the ``reason`` containment was refused, and what Cordon's identity is."""

    ok: bool
    reason: str | None = None
    cordon_identity: str | None = None


class Prepared(BaseModel):
    """What the pre-approval half of a run settled, in one value: the run it belongs to, the
    enrichment facts (``{action name: result}``, redacted), the guard's outcome
    (:class:`GuardOutcome` dump) and the plan (``None`` when the guard refused).

    The respond flow computes it in one task; a run resumed after its Slack request rebuilds it from
    the ledger with :meth:`from_ledger` instead of replaying that task from Prefect's result cache."""

    run_id: str | None
    enrichment: dict[str, Any]
    guard: dict[str, Any]
    plan: Plan | None = None
    #: where the Slack request is (``{channel, ts}``), for a run rebuilt from the ledger
    where: dict[str, Any] | None = None

    @classmethod
    def from_ledger(cls, records: Iterable[Any], run_id: str, *, asked: bool = True) -> Prepared | None:
        """The pre-approval half of run ``run_id`` as its ledger records say it happened, once that
        run's Slack request is out, else ``None``.

        ``records``: the case's :class:`cordon.audit.ledger.LedgerRecord` rows in ``seq`` order. Read:
        ``enrichment.completed`` / ``enrichment.failed`` (``{action, result}``), ``guard.passed``,
        ``plan.created`` (:meth:`Plan.model_dump`) and ``approval.asked`` with ``mode: slack`` and the
        plan's hash, all of run ``run_id`` (a record of another run or attempt never counts). ``None``
        when one of them is missing (the run has not asked yet: it computes and asks as usual) or
        when the plan read back does not hash to the hash it was approved under (:func:`plan_hash`:
        the ledger's redaction changed a parameter), so what runs is always the plan that was asked.
        ``asked=False`` reads an incident member's half (the lead case holds the ask): no
        ``approval.asked`` is needed."""
        facts: dict[str, Any] = {}
        guard_outcome = plan = None
        request: dict[str, Any] | None = None
        for r in records:
            if r.run_id != run_id:
                continue
            if r.kind in ("enrichment.completed", "enrichment.failed"):
                facts[r.payload["action"]] = r.payload["result"]
            elif r.kind == "guard.passed":
                guard_outcome = r.payload
            elif r.kind == "plan.created":
                plan = Plan.model_validate(r.payload)
            elif r.kind == "approval.asked" and r.payload.get("mode") in ("slack", "teams") and plan is not None:
                request = r.payload if r.payload.get("plan_hash") == plan.hash else request
        if not asked and plan is not None:
            request = {}
        if request is None or not (guard_outcome and plan):
            return None
        if plan_hash(plan.case_id, plan.playbook, plan.steps) != plan.hash:
            return None
        return cls(run_id=run_id, enrichment=facts, guard=guard_outcome, plan=plan, where=request.get("where"))


def _context(detection: Detection, params: dict[str, Any], clients: Callable[..., Any],
             enrichment: dict[str, Any] | None = None) -> ActionContext:
    return ActionContext(detection=detection, params=params, clients=clients, enrichment=enrichment or {})


def _depends_on_enrichment(value: Any) -> bool:
    """Whether a step's ``with`` (any nesting) has a template naming ``enrichment``."""
    if isinstance(value, dict):
        return any(_depends_on_enrichment(v) for v in value.values())
    if isinstance(value, list):
        return any(_depends_on_enrichment(v) for v in value)
    return isinstance(value, str) and "{{" in value and "enrichment" in value


def _enrich_one(step: Any, detection: Detection, clients: Callable[..., Any], facts: dict[str, Any]) -> Any:
    cls = get_action(step.action)
    try:
        params = cls.validate_params(render_params(step.with_, template_context(detection, facts)))
        action = cls()
        assert isinstance(action, EnrichmentAction)
        return action.run(_context(detection, params, clients, facts))
    except Exception as exc:  # noqa: BLE001 - recorded for the responder
        return {"error": f"{type(exc).__name__}: {exc}"}


def enrich(playbook: Playbook, detection: Detection, clients: Callable[..., Any], *,
           max_workers: int = 8) -> dict[str, Any]:
    """Run the playbook's ``enrich`` steps; returns ``{action name: facts}`` in the playbook's order.

    A failing enrichment is recorded as ``{"error": "..."}`` under its name: enrichment informs
    the responder, it never blocks the response. When the detection's provider declares
    ``thread_safe_clients`` (:class:`cordon.providers.Provider`; AWS does), the steps whose ``with``
    names no ``enrichment`` run concurrently (up to ``max_workers`` threads, so the ask waits for
    the slowest call, not their sum); a step that names ``enrichment`` runs after every step
    before it, as it does when the steps run one after another (``max_workers=1``, or a provider
    whose clients are not thread-safe).
    """
    from cordon.providers import get_provider

    steps = list(playbook.enrich)
    try:
        parallel = max_workers > 1 and len(steps) > 1 and get_provider(detection.provider).thread_safe_clients
    except ValueError:  # not a registered provider: one step after another
        parallel = False
    facts: dict[str, Any] = {}
    if not parallel:
        for step in steps:
            facts[step.action] = _enrich_one(step, detection, clients, facts)
        return facts
    import contextvars
    from concurrent.futures import ThreadPoolExecutor

    done: dict[int, Any] = {}
    with ThreadPoolExecutor(max_workers=min(max_workers, len(steps)), thread_name_prefix="cordon-enrich") as pool:
        batch: list[int] = []

        def drain() -> None:
            snapshot = {steps[j].action: done[j] for j in sorted(done)}
            # each step in a copy of the caller's context (the Prefect run's, for its logger)
            futures = {i: pool.submit(contextvars.copy_context().run, _enrich_one, steps[i], detection, clients,
                                      snapshot) for i in batch}
            done.update({i: f.result() for i, f in futures.items()})
            batch.clear()

        for i, step in enumerate(steps):
            if _depends_on_enrichment(step.with_):
                drain()
                done[i] = _enrich_one(step, detection, clients, {steps[j].action: done[j] for j in sorted(done)})
            else:
                batch.append(i)
        drain()
    for i in range(len(steps)):
        facts[steps[i].action] = done[i]
    return facts


def caller_identity(clients: Callable[..., Any]) -> str | None:
    """Cordon's own identity: the factory's ``own_identity()`` (:class:`cordon.clouds.Clients`; GCP:
    the service-account email, AWS: the ARN ``sts:GetCallerIdentity`` answers); ``None`` if it has
    none or it cannot be read."""
    own = getattr(clients, "own_identity", None)
    try:
        return own() if own is not None else None
    except Exception:  # noqa: BLE001 - the guard then refuses on the safe side only if it matches
        return None


def own_identities(clients: Callable[..., Any]) -> list[str]:
    """ARNs the client factory knows it signs as without asking the cloud (the member role an AWS
    factory assumes: ``clients.own_identities()``, :func:`cordon.providers.aws.clients.aws_clients`); ``[]``
    when it has none or cannot say."""
    known = getattr(clients, "own_identities", None)
    try:
        return [str(a) for a in known()] if known is not None else []
    except Exception:  # noqa: BLE001 - the STS answer is still compared
        return []


def _same_principal(provider: str, a: str | None, b: str | None) -> bool:
    """Whether ``a`` and ``b`` (principal uids: ARNs, emails, object ids) name one principal: equal
    ignoring case, or the same by ``provider``'s rules (:meth:`cordon.providers.Provider.same_principal`)."""
    if not a or not b:
        return False
    return a.lower() == b.lower() or get_provider(provider).same_principal(a, b)


def _acts_on(playbook: Playbook, pattern: str) -> bool:
    """Whether every containment step of ``playbook`` is an action declared to act on principals
    protected by ``pattern`` (``Action.acts_on_protected``: the root user's own access key, deleted
    through centralized root access, :mod:`cordon.providers.aws.actions`); the pattern must be the
    one ``protected_principals`` matched, so a narrower or other entry still refuses."""

    return bool(playbook.contain) and all(
        pattern in (getattr(get_action(step.action), "acts_on_protected", None) or ()) for step in playbook.contain)


def guard(playbook: Playbook, detection: Detection, config: Config, clients: Callable[..., Any],
          enrichment: dict[str, Any] | None = None) -> GuardOutcome:
    """Refuse containment that would touch what it must not.

    Refuses when: the detection is suppressed; the target principal or the credential's owner
    matches ``protected_principals`` (unless every containment step's action declares it acts on
    that entry, ``acts_on_protected``: the root user's own key); the target or owner is Cordon's own identity *in the
    detection's account* (what ``sts:GetCallerIdentity`` answers through ``clients``: with several
    AWS accounts, the member role assumed there, an assumed-role session matching its role; and
    the role ARN the factory was configured to assume, :func:`own_identities`, even when STS
    cannot be asked); the detection's provider refuses (:meth:`cordon.providers.Provider.guard`: for
    AWS, clients acting in another account than the detection's, or the credential being the access
    key Cordon signs with; for Azure, a credential on a managed identity, from ``enrichment``'s
    ``servicePrincipalType``); or a containment step's rendered parameters do not name the
    detection's exact credential (:meth:`Action.check_identifies`).
    """
    if detection.suppressed:
        return GuardOutcome(ok=False, reason=f"suppressed detection: {detection.suppressed}")
    owner = detection.credential.owner if detection.credential else None
    hit = config.is_protected(detection.target.uid, owner.uid if owner else None)
    if hit and not _acts_on(playbook, hit):
        return GuardOutcome(ok=False, reason=f"protected principal (matches '{hit}')")
    me = caller_identity(clients) if playbook.contain else None
    mine = ([me] if me else []) + (own_identities(clients) if playbook.contain else [])
    for who in mine:
        if (_same_principal(detection.provider, who, detection.target.uid)
                or _same_principal(detection.provider, who, owner.uid if owner else None)):
            return GuardOutcome(ok=False, reason=f"target is Cordon's own identity ({who})", cordon_identity=me or who)
    refusal = get_provider(detection.provider).guard(detection, clients, me, enrichment)
    if refusal:
        return GuardOutcome(ok=False, reason=refusal, cordon_identity=me)
    for i, step in enumerate(playbook.contain):
        cls = get_action(step.action)
        try:
            params = render_params(step.with_, template_context(detection, enrichment))
            cls.validate_params(params)
        except ValueError as exc:
            return GuardOutcome(ok=False, reason=f"contain.{i}: {exc}", cordon_identity=me)
        mismatch = cls.check_identifies(params, detection)
        if mismatch:
            return GuardOutcome(ok=False, reason=f"contain.{i}: {mismatch}", cordon_identity=me)
    return GuardOutcome(ok=True, cordon_identity=me)


def plan_hash(case_id: str, playbook: str, steps: list[PlanStep]) -> str:
    """SHA-256 over the case, playbook and each step's action, parameters, target, calls and (in
    an incident's plan) member case (not the state read before, which may change without the plan changing)."""
    body = {"case_id": case_id, "playbook": playbook,
            "steps": [{"action": s.action, "params": s.params, "target": s.target, "calls": s.calls,
                       **({"case_id": s.case_id} if s.case_id else {})} for s in steps]}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


def build_plan(case_id: str, playbook: Playbook, detection: Detection, clients: Callable[..., Any],
               enrichment: dict[str, Any] | None = None) -> Plan:
    """Render the ``contain`` steps and dry-run each (reads only) into a :class:`Plan`. Raises
    :class:`cordon.action.GuardError` when an action refuses to plan, or its plan comes back
    ``failed`` (the cloud refused a server-side dry run of a call, e.g. a Kubernetes 409 or 403)."""
    steps: list[PlanStep] = []
    for step in playbook.contain:
        cls = get_action(step.action)
        params = cls.validate_params(render_params(step.with_, template_context(detection, enrichment)))
        action = cls()
        assert isinstance(action, ContainmentAction)
        dry = action.plan(_context(detection, params, clients, enrichment))
        if dry.status == "failed":  # the cloud itself refused the plan (a server dry run)
            raise GuardError(f"{step.action} on {dry.target}: {dry.error}")
        steps.append(PlanStep(action=step.action, params=params, target=dry.target, before=dry.before,
                              calls=[c.model_dump(exclude_none=True) for c in dry.calls],
                              describe=[c.describe() for c in dry.calls],
                              rollback_supported=cls.rollback_supported))
    return Plan(case_id=case_id, playbook=playbook.name, steps=steps,
                hash=plan_hash(case_id, playbook.name, steps))


def run_step(step: PlanStep, detection: Detection, clients: Callable[..., Any]) -> ActionResult:
    """Run one planned containment step (idempotent; see :meth:`ContainmentAction.run`): exactly
    the calls the approved plan holds (``step.calls``), or nothing and ``plan_changed`` when the
    state read now needs others."""
    action = get_action(step.action)()
    assert isinstance(action, ContainmentAction)
    return action.run(_context(detection, step.params, clients), approved=step.calls)


def verify_step(step: PlanStep, detection: Detection, clients: Callable[..., Any]) -> dict[str, Any]:
    """Read the state again: ``{"action", "target", "held": bool, "state": ...}``."""
    action = get_action(step.action)()
    assert isinstance(action, ContainmentAction)
    try:
        held, state = action.verify(_context(detection, step.params, clients))
    except Exception as exc:  # noqa: BLE001
        return {"action": step.action, "target": step.target, "held": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"action": step.action, "target": step.target, "held": held, "state": state}


def rollback_step(step: PlanStep, result: ActionResult, detection: Detection,
                  clients: Callable[..., Any]) -> ActionResult:
    """Undo one ``contained`` result of ``step``'s action (``GuardError`` when not supported)."""
    action = get_action(step.action)()
    assert isinstance(action, ContainmentAction)
    return action.rollback(_context(detection, step.params, clients), result)


def outcome_status(results: list[dict[str, Any]], checks: list[dict[str, Any]]) -> str:
    """A run's status once containment and verification are done: ``failed`` when a step failed,
    ``plan_changed`` when a step refused because the state needed other calls than approved,
    ``refused`` when a step's own check refused at run time (nothing done by it: the object was no
    longer the one named), else ``contained`` when every check held, else ``not_verified``.
    ``results``: action result dumps
    (``status``); ``checks``: verification outcomes (``held``)."""
    if any(r["status"] == "failed" for r in results):
        return "failed"
    if any(r["status"] == "plan_changed" for r in results):
        return "plan_changed"
    if any(r["status"] == "refused" for r in results):
        return "refused"
    return "contained" if all(c["held"] for c in checks) else "not_verified"
