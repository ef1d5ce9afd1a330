"""The action model: small, self-describing units of enrichment and containment.

Modelled on Cloud Custodian's actions (``c7n/actions``): each action class declares

* ``name``: the name playbooks use (``aws.deactivate-access-key``),
* ``provider`` and ``kind`` (``enrich`` or ``contain``),
* ``schema``: a JSON Schema (draft 2020-12) for its parameters, checked when the playbook loads,
* ``permissions``: the exact cloud permissions it needs (``iam:UpdateAccessKey``),
* ``credential_kinds``: the :data:`~cordon.detections.model.CredentialKind` values it may act on,
* ``rollback_supported``: whether :meth:`ContainmentAction.rollback` can undo it,

and shows a YAML example in its docstring. Provider actions live in ``cordon/providers/<cloud>/actions.py`` and
register themselves with :func:`register`.

A containment action reads the state before, acts, reads the state after, and returns both in an
:class:`ActionResult`. It is idempotent: run on a credential that is already contained it makes
no change and reports ``already_contained``. :meth:`ContainmentAction.plan` returns the exact API
calls it would make (dry run) without calling anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import jsonschema
from pydantic import BaseModel, Field

from cordon.detections.model import Detection

ActionStatus = Literal[
    "contained",  # the action changed the state as intended
    "already_contained",  # nothing to do: the state was already the intended one
    "planned",  # dry run: ``calls`` holds what would be called
    "failed",  # the cloud refused or errored; ``error`` says why
    "refused",  # the guard refused to act (protected principal, credential mismatch)
    "rolled_back",
    "ok",  # enrichment succeeded
]


class ActionParamError(ValueError):
    """Parameters that do not satisfy an action's schema.

    ``action`` is the action name, ``field`` the dotted path of the offending parameter, and
    ``reason`` the JSON Schema validator's message.
    """

    def __init__(self, action: str, field_path: str, reason: str):
        self.action = action
        self.field = field_path
        self.reason = reason
        super().__init__(f"action '{action}': parameter '{field_path}': {reason}")


class GuardError(RuntimeError):
    """Containment refused: the target is protected, is Cordon itself, or is not the exact
    credential named by the detection."""


class ApiCall(BaseModel):
    """One cloud API call, as planned or as made: ``service`` (boto3 client name, e.g. ``iam``),
    ``operation`` (the API's own name, e.g. ``UpdateAccessKey``) and its ``params``."""

    service: str
    operation: str
    params: dict[str, Any] = Field(default_factory=dict)
    region: str | None = None

    def describe(self) -> str:
        """``iam:UpdateAccessKey(AccessKeyId=AKIA..., Status=Inactive, UserName=bob)``."""
        args = ", ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.service}:{self.operation}({args})"


class ActionResult(BaseModel):
    """What an action did.

    ``target`` names the exact object acted on (``arn:aws:iam::111122223333:user/bob
    access-key AKIA...``); ``before`` / ``after`` are the states read from the cloud (``None``
    when the object does not exist); ``calls`` the mutating API calls made (or planned);
    ``rollback`` the parameters :meth:`ContainmentAction.rollback` needs, when supported.
    """

    name: str
    target: str
    status: ActionStatus
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    calls: list[ApiCall] = Field(default_factory=list)
    rollback: dict[str, Any] | None = None
    error: str | None = None
    data: dict[str, Any] | None = None


@dataclass
class ActionContext:
    """What an action runs with.

    ``detection`` is the detection being answered; ``params`` the action's validated parameters
    (already rendered from the playbook's templates); ``clients`` a factory
    ``clients(service, region=None)`` returning an SDK client (for AWS a boto3 client, pointed at
    the sandbox's endpoints when Cordon runs in the sandbox); ``enrichment`` the facts gathered so
    far, keyed by enrichment action name.
    """

    detection: Detection
    params: dict[str, Any]
    clients: Callable[..., Any]
    enrichment: dict[str, Any] = field(default_factory=dict)


class Action:
    """Base of every action. Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]
    provider: ClassVar[str]
    kind: ClassVar[Literal["enrich", "contain"]]
    schema: ClassVar[dict[str, Any]] = {"type": "object", "additionalProperties": False, "properties": {}}
    permissions: ClassVar[tuple[str, ...]] = ()
    credential_kinds: ClassVar[tuple[str, ...]] = ()
    rollback_supported: ClassVar[bool] = False
    #: Which parameters name the detection's credential or principal, as ``param -> path`` with
    #: paths ``credential.uid``, ``credential.owner.name``, ``target.name``. The guard refuses a
    #: step whose rendered parameter differs from that value: containment acts on the exact
    #: credential named by the detection and nothing else.
    identifies: ClassVar[dict[str, tuple[str, ...]]] = {}

    @classmethod
    def validate_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Check ``params`` against :attr:`schema`; raise :class:`ActionParamError` naming the
        first offending field. Returns ``params`` unchanged when valid."""
        validator = jsonschema.Draft202012Validator(cls.schema)
        errors = sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path))
        if errors:
            err = errors[0]
            path = ".".join(str(p) for p in err.absolute_path) or (
                err.params.get("additionalProperties") if isinstance(err.params, dict) else None
            ) or "<params>"
            raise ActionParamError(cls.name, str(path), err.message)
        return params

    @classmethod
    def check_identifies(cls, params: dict[str, Any], detection: Detection) -> str | None:
        """``None`` when every parameter in :attr:`identifies` equals one of the detection
        values it must name; else the reason (``access_key_id 'AKIA2' is not the detection's
        credential 'AKIA1'``)."""
        summary = detection.summary()
        for param, paths in cls.identifies.items():
            if param not in params:
                continue
            allowed = {v for v in (_dig(summary, p) for p in paths) if v}
            if str(params[param]) not in {str(a) for a in allowed}:
                return (f"{cls.name}: parameter '{param}' = {params[param]!r} is not the detection's "
                        f"{' / '.join(paths)} ({', '.join(sorted(map(str, allowed))) or 'absent'})")
        return None

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """Machine-readable self-description (``cordon actions``; least-privilege policy docs)."""
        return {
            "name": cls.name,
            "provider": cls.provider,
            "kind": cls.kind,
            "schema": cls.schema,
            "permissions": list(cls.permissions),
            "credential_kinds": list(cls.credential_kinds),
            "rollback_supported": cls.rollback_supported,
            "doc": (cls.__doc__ or "").strip(),
        }


class EnrichmentAction(Action):
    """Reads facts; never changes anything. :meth:`run` returns a JSON-serialisable dict."""

    kind = "enrich"

    def run(self, ctx: ActionContext) -> dict[str, Any]:  # pragma: no cover - interface
        raise NotImplementedError


class ContainmentAction(Action):
    """Changes one credential's state. Subclasses implement :meth:`target`, :meth:`read_state`,
    :meth:`is_contained`, :meth:`plan_calls` and, when ``rollback_supported``,
    :meth:`rollback_calls`. :meth:`run`, :meth:`plan`, :meth:`verify` and :meth:`rollback` are
    shared so every action records before/after and is idempotent the same way."""

    kind = "contain"

    def target(self, ctx: ActionContext) -> str:  # pragma: no cover - interface
        """Human-readable name of the exact object acted on."""
        raise NotImplementedError

    def read_state(self, ctx: ActionContext) -> dict[str, Any] | None:  # pragma: no cover
        """Read the object's current state from the cloud; ``None`` if it does not exist."""
        raise NotImplementedError

    def is_contained(self, state: dict[str, Any] | None) -> bool:  # pragma: no cover
        """Whether ``state`` is already the contained state."""
        raise NotImplementedError

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:  # pragma: no cover
        """The mutating API calls that take ``state`` to the contained state."""
        raise NotImplementedError

    def rollback_calls(self, ctx: ActionContext, result: ActionResult) -> list[ApiCall]:
        """The API calls that undo ``result``; only for ``rollback_supported`` actions."""
        raise GuardError(f"action '{self.name}' cannot be rolled back")

    def rollback_data(self, ctx: ActionContext, before: dict[str, Any] | None) -> dict[str, Any] | None:
        """What rollback needs to know, recorded in the result (default: the state before)."""
        return {"before": before} if self.rollback_supported else None

    # -- shared behaviour -------------------------------------------------------------------
    def call(self, ctx: ActionContext, api: ApiCall) -> Any:  # pragma: no cover - interface
        """Make one API call through the provider's SDK client (each provider base class
        implements this once, e.g. boto3's ``client.<snake_case>(**params)`` for AWS)."""
        raise NotImplementedError

    def plan(self, ctx: ActionContext) -> ActionResult:
        """Dry run: read the state and return the calls that would be made, changing nothing."""
        before = self.read_state(ctx)
        calls = [] if self.is_contained(before) else self.plan_calls(ctx, before)
        return ActionResult(name=self.name, target=self.target(ctx), status="planned", before=before,
                            calls=calls)

    def run(self, ctx: ActionContext) -> ActionResult:
        """Read the state, act if needed, read it again. A :class:`GuardError` becomes
        ``status='refused'``, any other error ``status='failed'``. A state of ``None`` (the object
        does not exist) that :meth:`is_contained` accepts is ``already_contained`` with
        ``data={"missing": True}``."""
        target = self.target(ctx)
        before: dict[str, Any] | None = None
        made: list[ApiCall] = []
        try:
            before = self.read_state(ctx)
            if self.is_contained(before):
                # ``None`` means the object does not exist: nothing to contain, said explicitly.
                return ActionResult(name=self.name, target=target, status="already_contained",
                                    before=before, after=before,
                                    data={"missing": True} if before is None else None)
            for api in self.plan_calls(ctx, before):
                self.call(ctx, api)
                made.append(api)
            after = self.read_state(ctx)
        except GuardError as exc:
            return ActionResult(name=self.name, target=target, status="refused", before=before,
                                calls=made, error=f"GuardError: {exc}")
        except Exception as exc:  # noqa: BLE001 - reported, never swallowed
            return ActionResult(name=self.name, target=target, status="failed", before=before,
                                calls=made, error=f"{type(exc).__name__}: {exc}")
        return ActionResult(name=self.name, target=target, status="contained", before=before, after=after,
                            calls=made, rollback=self.rollback_data(ctx, before))

    def verify(self, ctx: ActionContext) -> tuple[bool, dict[str, Any] | None]:
        """Read the state again; ``(held, state)`` where ``held`` says containment holds."""
        state = self.read_state(ctx)
        return self.is_contained(state), state

    def rollback(self, ctx: ActionContext, result: ActionResult) -> ActionResult:
        """Undo ``result`` (a previous ``contained`` result of this action)."""
        target = self.target(ctx)
        if not self.rollback_supported:
            raise GuardError(f"action '{self.name}' cannot be rolled back")
        before = self.read_state(ctx)
        made: list[ApiCall] = []
        try:
            for api in self.rollback_calls(ctx, result):
                self.call(ctx, api)
                made.append(api)
            after = self.read_state(ctx)
        except Exception as exc:  # noqa: BLE001
            return ActionResult(name=self.name, target=target, status="failed", before=before, calls=made,
                                error=f"{type(exc).__name__}: {exc}")
        return ActionResult(name=self.name, target=target, status="rolled_back", before=before, after=after,
                            calls=made)


_REGISTRY: dict[str, type[Action]] = {}


def register(cls: type[Action]) -> type[Action]:
    """Class decorator: make ``cls`` available to playbooks under ``cls.name``.

    Raises ``ValueError`` if the name is taken or the schema is not a valid JSON Schema.
    """
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"action name '{cls.name}' registered twice")
    jsonschema.Draft202012Validator.check_schema(cls.schema)
    _REGISTRY[cls.name] = cls
    return cls


def load_builtin_actions() -> None:
    """Import every registered provider's actions module (:mod:`cordon.providers`), so their
    actions register. An import error inside one propagates."""
    from cordon.providers import load_all_actions

    load_all_actions()


def get_action(name: str) -> type[Action]:
    """The action class registered as ``name``; ``KeyError`` naming the known ones if absent."""
    load_builtin_actions()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown action '{name}' (known: {', '.join(sorted(_REGISTRY))})") from None


def all_actions() -> dict[str, type[Action]]:
    """Every registered action, by name."""
    load_builtin_actions()
    return dict(_REGISTRY)



def _dig(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj
