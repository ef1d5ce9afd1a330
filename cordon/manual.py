"""Manual playbook runs for on-call: ``cordon run PLAYBOOK --param k=v`` and ``/cordon run``.

A playbook that declares ``parameters`` (:class:`cordon.playbooks.schema.Parameter`) can be run by
hand. The parameters are checked against the playbook's JSON Schema
(:meth:`~cordon.playbooks.schema.Playbook.parameters_schema`, ``jsonschema`` Draft 2020-12), then
turned into a :class:`~cordon.detections.model.Detection` with ``source="manual"`` and
``rule.type="manual"``, which takes the same path as any other detection: ledger
``detection.received``, the case opened (or joined: the case key is the credential's), the same
respond flow, the same approval. The person who asked is in ``detection.raw["requested_by"]``
(``slack_user_id``, ``email``, ``cli_user``: any of them), so the approval policy can refuse their
own approval, and in the ledger record ``manual.requested`` (a refused request: ``manual.refused``).

How parameters fill the detection: each parameter's ``sets`` lists detection fields
(``credential.uid``, ``credential.owner.name``, ``account_uid``, ...). The credential kind is the
one in the playbook's ``when.credential_kinds`` (or a parameter that sets ``credential.kind``).
Then, per provider, what the cloud's own naming implies is derived (never guessed):

* AWS: ``target.uid`` / ``credential.owner.uid`` as ``arn:aws:iam::<account>:user/<name>`` from the
  user name and account (so ``protected_principals`` such as ``...:user/break-glass*`` still hold);
* GCP: the project from ``projects/P/...`` key names and from service-account emails
  (``NAME@P.iam.gserviceaccount.com``); the owning service account of a key
  ``projects/P/serviceAccounts/EMAIL/keys/K``;
* everywhere: the target is the credential's owner when no parameter names it.
"""

from __future__ import annotations

import getpass
import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import jsonschema

from cordon.detections.model import Actor, Credential, Detection, Principal, RawRef, RuleRef, record_sha256
from cordon.playbooks.schema import Playbook
from cordon.providers import get_provider
from cordon.standins import as_stand_ins

if TYPE_CHECKING:  # pragma: no cover
    from cordon.engine import CaseTicket, Responder

#: Keys of ``detection.raw["requested_by"]`` (the contract with the approval policy).
REQUESTED_BY_KEYS = ("slack_user_id", "email", "cli_user")

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


class ManualRunError(ValueError):
    """A manual run that cannot start: unknown or non-runnable playbook, or bad parameters.

    ``playbook`` (name as asked), ``path`` (the playbook file, when known), ``errors`` (parameter
    name -> reason; the key ``playbook`` when the playbook itself is the problem). The message
    names the file and the first parameter at fault.
    """

    def __init__(self, playbook: str, path: str | None, errors: Mapping[str, str]):
        self.playbook = playbook
        self.path = path
        self.errors = dict(errors)
        first, reason = next(iter(self.errors.items()))
        where = f"{path}: " if path else ""
        if first == "playbook":
            text = f"{where}playbook '{playbook}': {reason}"
        else:
            text = f"{where}playbook '{playbook}': parameter '{first}': {reason}"
        if len(self.errors) > 1:
            text += f" (and {len(self.errors) - 1} more: {', '.join(list(self.errors)[1:])})"
        super().__init__(text)


def runnable(playbooks: Iterable[Playbook]) -> list[Playbook]:
    """The playbooks that declare ``parameters`` (only those can be run by hand), by name."""
    return sorted((pb for pb in playbooks if pb.parameters), key=lambda pb: pb.name)


def find_playbook(playbooks: Iterable[Playbook], name: str) -> Playbook:
    """The runnable playbook called ``name``. Raises :class:`ManualRunError` (key ``playbook``)
    when there is none, or when it declares no parameters (listing the runnable ones)."""
    books = list(playbooks)
    names = ", ".join(pb.name for pb in runnable(books)) or "none"
    for pb in books:
        if pb.name == name:
            if not pb.parameters:
                raise ManualRunError(name, pb.path, {"playbook": f"declares no parameters, so it cannot be run "
                                                                 f"by hand (runnable: {names})"})
            return pb
    raise ManualRunError(name, None, {"playbook": f"no such playbook (runnable: {names})"})


def parse_pairs(pairs: Iterable[str], playbook: str = "?") -> dict[str, str]:
    """``["k=v", ...]`` (``--param`` / the slash command's words) -> ``{k: v}``.

    Raises :class:`ManualRunError` for an item without ``=``, an empty name, or a name given twice.
    """
    out: dict[str, str] = {}
    errors: dict[str, str] = {}
    for item in pairs:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            errors[name or item] = f"expected key=value, got {item!r}"
        elif name in out:
            errors[name] = "given more than once"
        else:
            out[name] = value
    if errors:
        raise ManualRunError(playbook, None, errors)
    return out


def _coerce(kind: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    text = value.strip()
    if kind == "integer" and re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    if kind == "boolean" and text.lower() in _TRUE | _FALSE:
        return text.lower() in _TRUE
    return text


def check_params(pb: Playbook, raw: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Coerce ``raw`` (strings from a command line, a slash command or a modal) to the declared
    types, apply defaults, and validate against :meth:`Playbook.parameters_schema`.

    Returns ``(params, errors)``: the coerced parameters and ``{parameter name: reason}`` (empty
    when valid). Empty strings count as not given.
    """
    params: dict[str, Any] = {}
    for name, value in raw.items():
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        spec = pb.parameters.get(name)
        params[name] = _coerce(spec.type, value) if spec else value
    for name, spec in pb.parameters.items():
        if name not in params and spec.default is not None:
            params[name] = spec.default
    errors: dict[str, str] = {}
    validator = jsonschema.Draft202012Validator(pb.parameters_schema())
    for err in validator.iter_errors(params):
        if err.validator == "required":
            for name in err.validator_value:
                if name not in params:
                    errors.setdefault(name, f"required ({pb.parameters[name].description})")
        elif err.validator == "additionalProperties":
            for name in sorted(set(params) - set(pb.parameters)):
                errors.setdefault(name, f"not a parameter of this playbook (its parameters: "
                                        f"{', '.join(pb.parameters)})")
        elif err.absolute_path:
            name = str(err.absolute_path[0])
            spec = pb.parameters[name]
            if err.validator == "pattern":
                reason = f"{params[name]!r} does not match {spec.pattern} ({spec.description})"
            else:
                reason = err.message
            errors.setdefault(name, reason)
    return params, errors


def validate_params(pb: Playbook, raw: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`check_params`, raising :class:`ManualRunError` (naming the parameter and the
    playbook's file) instead of returning errors."""
    params, errors = check_params(pb, raw)
    if errors:
        raise ManualRunError(pb.name, pb.path, errors)
    return params


def missing_required(pb: Playbook, raw: Mapping[str, Any]) -> list[str]:
    """Required parameters not given (or empty) in ``raw``, in declaration order."""
    return [n for n, p in pb.parameters.items()
            if p.required and p.default is None and not str(raw.get(n) or "").strip()]


def requester_label(requested_by: Mapping[str, Any]) -> str:
    """The ledger ``actor`` for a requester: ``slack:<user id>``, ``cli:<user>`` or ``email:<addr>``."""
    if requested_by.get("slack_user_id"):
        return f"slack:{requested_by['slack_user_id']}"
    if requested_by.get("cli_user"):
        return f"cli:{requested_by['cli_user']}"
    return f"email:{requested_by.get('email')}"


def cli_requester() -> dict[str, str]:
    """``{"cli_user": <login name>}`` for ``cordon run`` (``getpass.getuser``)."""
    return {"cli_user": getpass.getuser()}


def _check_requester(requested_by: Mapping[str, Any]) -> dict[str, str]:
    if not isinstance(requested_by, Mapping):
        raise ValueError("requested_by must be a mapping")
    unknown = set(requested_by) - set(REQUESTED_BY_KEYS)
    if unknown:
        raise ValueError(f"requested_by: unknown key(s) {sorted(unknown)} (allowed: {', '.join(REQUESTED_BY_KEYS)})")
    clean = {k: str(v) for k, v in requested_by.items() if v}
    if not clean:
        raise ValueError(f"requested_by: give at least one of {', '.join(REQUESTED_BY_KEYS)}")
    return clean


def _derive(provider: str, kind: str, f: dict[str, Any]) -> None:
    """Fill what the provider's naming implies (:meth:`cordon.providers.Provider.manual_fields`), then
    the target from the credential's owner; never overwriting a given value."""
    get_provider(provider).manual_fields(kind, f)
    for part in ("uid", "name"):
        if f.get(f"credential.owner.{part}") and not f.get("target.uid") and not f.get("target.name"):
            f.setdefault(f"target.{part}", f[f"credential.owner.{part}"])


def manual_detection(pb: Playbook, params: Mapping[str, Any], requested_by: Mapping[str, Any], *,
                     now: datetime | None = None) -> Detection:
    """The :class:`Detection` for a manual run of ``pb`` with validated ``params`` (see
    :func:`validate_params`) asked for by ``requested_by`` (keys :data:`REQUESTED_BY_KEYS`).

    ``source="manual"``, ``rule={"type": "manual", "uid": <playbook>, "path": <file>}``, severity
    ``high`` (a responder says it is real), the actor unknown (a manual run names the credential,
    not who made it), ``raw`` = ``{"manual": true, "playbook", "parameters", "requested_by",
    "requested_at"}``. Raises ``ValueError`` for a bad ``requested_by``.
    """
    who = _check_requester(requested_by)
    when = (now or datetime.now(UTC)).astimezone(UTC)
    fields: dict[str, Any] = {}
    for name, spec in pb.parameters.items():
        if name in params:
            for target in spec.sets:
                fields.setdefault(target, params[name])
    kind = str(fields.get("credential.kind") or pb.when.credential_kinds[0])
    _derive(pb.when.provider, kind, fields)
    attributes = {k.split(".", 2)[2]: v for k, v in fields.items() if k.startswith("credential.attributes.")}
    get_provider(pb.when.provider).manual_principals(kind, fields)
    owner = Principal(uid=fields.get("credential.owner.uid"), name=fields.get("credential.owner.name"),
                      type=fields.get("credential.owner.type"), account_uid=fields.get("credential.owner.account_uid"))
    target = Principal(uid=fields.get("target.uid"), name=fields.get("target.name"), type=fields.get("target.type"),
                       account_uid=fields.get("target.account_uid"))
    raw = {"manual": True, "playbook": pb.name, "playbook_path": pb.path, "parameters": dict(params),
           "requested_by": who, "requested_at": when.isoformat(timespec="seconds")}
    return Detection(
        uid=f"manual-{uuid.uuid4().hex}",
        provider=pb.when.provider,
        source="manual",
        technique_ids=list(pb.when.technique_ids),
        rule=RuleRef(type="manual", uid=pb.name, name=f"manual run of {pb.name}", path=pb.path),
        severity="high",
        time=when,
        account_uid=fields.get("account_uid"),
        region=fields.get("region"),
        actor=Actor(),
        target=target,
        credential=Credential(kind=kind, uid=fields.get("credential.uid"), owner=owner, attributes=attributes),
        raw_ref=RawRef(origin=f"manual:{requester_label(who)}", position=0, sha256=record_sha256(raw)),
        raw=raw,
    )


def open_manual_case(responder: Responder, playbook: str, raw_params: Mapping[str, Any],
                     requested_by: Mapping[str, Any], *, now: datetime | None = None) -> CaseTicket:
    """Validate, build the detection, and open (or join) its case through
    :meth:`cordon.engine.Responder.accept` with the named playbook; records ``manual.requested``
    (``playbook``, ``path``, ``parameters``, ``requested_by``, ``detection_uid``, ``opened``) on the
    case. A refused request (unknown playbook, bad parameters) is recorded as ``manual.refused``
    (no case) and raised as :class:`ManualRunError`."""
    who = _check_requester(requested_by)
    try:
        pb = find_playbook(responder.playbooks, playbook)
        params = validate_params(pb, raw_params)
    except ManualRunError as exc:
        responder.ledger.append("manual.refused", {"playbook": playbook, "path": exc.path, "errors": exc.errors,
                                                   "parameters": dict(raw_params), "requested_by": who},
                                actor=requester_label(who))
        raise
    detection = manual_detection(pb, params, who, now=now)
    ticket = responder.accept(detection, playbook=pb)
    assert ticket is not None  # a manual detection is never suppressed
    responder.ledger.append("manual.requested", {"playbook": pb.name, "path": pb.path, "parameters": params,
                                                 "requested_by": who, "detection_uid": detection.uid,
                                                 "opened": ticket.opened},
                            case_id=ticket.case_id, actor=requester_label(who))
    return ticket


def _approval_refusal(approval: str, who: Mapping[str, str], rehearsal: bool) -> str | None:
    """Why ``approval`` cannot decide a run ``who`` asked for, or ``None`` (no self-approval)."""
    if approval == "console":
        return ("--approve console would ask you, and you asked for this run: no self-approval "
                "(use --approve slack, or --sandbox --approve auto to rehearse)")
    if approval == "auto" and not rehearsal:
        return "--approve auto approves a run you asked for: allowed only with --sandbox (a rehearsal)"
    return None


def run_manual(responder: Responder, playbook: str, raw_params: Mapping[str, Any],
               requested_by: Mapping[str, Any], *, approval: str = "console", stand_ins: Any = None,
               cloud: dict[str, Any] | None = None, slack: dict[str, Any] | None = None) -> dict[str, Any]:
    """Open the manual case and run it: in this process (``approval`` ``console`` / ``auto``) or
    on the ``respond`` deployment (``slack``, ``teams``, ``both``, see :meth:`Responder.submit`). ``console`` is always
    refused (the person at the terminal asked for the run) and ``auto`` outside the sandbox too:
    :class:`ManualRunError` with the key ``approve``, recorded as ``manual.refused``. With ``stand_ins`` (a
    :class:`cordon.standins.StandIns`), the credential is seeded in the provider's stand-in first
    and the run uses it. Returns the case summary (``status`` ``joined_open_case`` when the
    credential already has a case). Raises :class:`ManualRunError` as :func:`open_manual_case`."""
    who = _check_requester(requested_by)
    refusal = _approval_refusal(approval, who, stand_ins is not None or bool((cloud or {}).get("sandbox")))
    if refusal:
        path = next((pb.path for pb in responder.playbooks if pb.name == playbook), None)
        responder.ledger.append("manual.refused", {"playbook": playbook, "path": path, "errors": {"approve": refusal},
                                                   "parameters": dict(raw_params), "requested_by": who},
                                actor=requester_label(who))
        raise ManualRunError(playbook, path, {"approve": refusal})
    ticket = open_manual_case(responder, playbook, raw_params, who)
    if stand_ins is not None and ticket.run:
        stand_in = as_stand_ins(stand_ins).for_provider(ticket.detection.provider)
        stand_in.seed_from_detection(ticket.detection)
        cloud = stand_in.cloud_params()
    from cordon.approvals.modes import waits

    if waits(approval):
        return responder.submit(ticket, cloud=cloud, slack=slack, approval=approval)
    return responder.run(ticket, approval=approval, cloud=cloud)
