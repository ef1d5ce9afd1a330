"""Who may approve a containment plan (or its rollback), and how many must.

The policy comes from two places:

* ``cordon/defaults/cordon.yaml``, section ``approval`` (global)::

      approval:
        approvers: {users: [U0ALICE01], groups: [S0SECOPS1]}   # Slack user / user group IDs
        quorum: {default: 1, critical: 2}   # distinct approvals, by the detection's severity
        group_cache: 60s                    # how long usergroups.users.list answers are kept
        grace: 1h                           # Prefect's suspend timeout = expire_after + grace
        deny_window: 0.5                    # seconds after an approval before containment starts
        identities:                         # Slack user -> cloud identities (ARN, UPN, Google email)
          U0ALICE01: ["arn:aws:iam::111122223333:user/alice", "alice@corp.onmicrosoft.com"]

  (``slack.approvers``, a list of user IDs, is still read and added to ``approval.approvers.users``);
* the playbook's ``approval`` block (:class:`cordon.playbooks.schema.Approval`): its ``approvers``
  are added to the global ones, its ``quorum`` (when set) wins over the severity default, and its
  ``escalate_to`` may approve once the request has been escalated.

Closed by default: with no approver configured for a request (neither in ``cordon.yaml`` nor in
the playbook) every click is refused, and the Slack path does not start at all while some
playbook that requires approval has none (:func:`require_approvers`, called by ``cordon serve``,
``cordon worker`` and ``cordon respond/run --approve slack|teams|both``); the sandbox, console and
auto paths need no approvers. Whatever the list, a clicker who is a principal of the detection
(actor, target, credential owner; matched through their e-mail and the explicit ``identities``
mapping) or who requested a manual run (``detection.raw["requested_by"]``: ``slack_user_id``,
``email``, ``cli_user``) is refused: no self-approval. The e-mail is the Slack profile's for a
Slack clicker (``users.info``) and the Entra user's ``mail`` or UPN for a Teams clicker
(``teams:<object id>``, read with Microsoft Graph: :class:`cordon.teams.directory.EntraDirectory`,
which also resolves ``entra:<group object id>`` approver groups). A clicker whose identity cannot
be resolved (no directory to ask, the look-up failed, or no e-mail, and no explicit
``identities`` entry) is refused too, rather than checked by user name.

Pure functions (:func:`load_settings`, :func:`require_approvers`, :func:`policy_for`, :func:`quorum_for`,
:func:`principal_names`, :func:`identity_forms`, :func:`self_approval_reason`) plus
:class:`SlackDirectory`, which asks Slack (``usergroups.users.list``,
https://api.slack.com/methods/usergroups.users.list; ``users.info``,
https://api.slack.com/methods/users.info) through a ``slack_sdk.WebClient`` and keeps answers for
a short TTL on a settable clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from slack_sdk import WebClient

from cordon.config import Config, ConfigError
from cordon.playbooks.schema import Approval, parse_duration

DEFAULT_QUORUM = 1
DEFAULT_CRITICAL_QUORUM = 2
DEFAULT_GROUP_CACHE_SECONDS = 60
DEFAULT_GRACE_SECONDS = 3600
#: How long after the approving claim containment waits before it starts (seconds): a Deny clicked
#: at the same moment as the Approve (recorded within this window) always wins.
DEFAULT_DENY_WINDOW_SECONDS = 0.5


@dataclass(frozen=True)
class ApprovalSettings:
    """The global approval policy from ``cordon/defaults/cordon.yaml`` (see the module docstring).

    ``identities`` maps a Slack user ID to cloud identities, lower-cased; times in seconds.
    """

    users: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    quorum_default: int = DEFAULT_QUORUM
    quorum_critical: int = DEFAULT_CRITICAL_QUORUM
    group_cache_seconds: float = DEFAULT_GROUP_CACHE_SECONDS
    grace_seconds: int = DEFAULT_GRACE_SECONDS
    deny_window_seconds: float = DEFAULT_DENY_WINDOW_SECONDS
    identities: Mapping[str, frozenset[str]] = field(default_factory=dict)


def _str_list(value: Any, where: str, path: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{path}: field '{where}': expected a list of strings")
    return value


def _seconds(value: Any, where: str, path: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    try:
        return parse_duration(str(value))
    except ValueError as exc:
        raise ConfigError(f"{path}: field '{where}': {exc}") from None


def _window(value: Any, where: str, path: str) -> float:
    """A short time in seconds: a number from 0 to 10, or a duration string (``"1s"``)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 10:
        return float(value)
    if isinstance(value, str):
        return float(_seconds(value, where, path))
    raise ConfigError(f"{path}: field '{where}': expected seconds from 0 to 10, got {value!r}")


def load_settings(config: Config) -> ApprovalSettings:
    """Read the ``approval`` section (and ``slack.approvers``) of ``config``.

    Raises :class:`cordon.config.ConfigError` naming ``cordon.yaml`` and the field when a value
    has the wrong shape (``approval.quorum.critical: 0``, a non-list ``identities`` entry...).
    """
    path = str(config.directory / "cordon.yaml")
    section = config.raw.get("approval") or {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"{path}: field 'approval': expected a mapping")
    approvers = section.get("approvers") or {}
    if not isinstance(approvers, Mapping):
        raise ConfigError(f"{path}: field 'approval.approvers': expected a mapping with users and groups")
    unknown = set(approvers) - {"users", "groups"}
    if unknown:
        raise ConfigError(f"{path}: field 'approval.approvers.{sorted(unknown)[0]}': expected users or groups")
    users = _str_list(approvers.get("users"), "approval.approvers.users", path) + list(config.approvers)
    groups = _str_list(approvers.get("groups"), "approval.approvers.groups", path)
    quorum = section.get("quorum") or {}
    if isinstance(quorum, int) and not isinstance(quorum, bool):
        quorum = {"default": quorum, "critical": max(quorum, DEFAULT_CRITICAL_QUORUM)}
    if not isinstance(quorum, Mapping):
        raise ConfigError(f"{path}: field 'approval.quorum': expected a number or {{default, critical}}")
    q: dict[str, int] = {}
    for key, default in (("default", DEFAULT_QUORUM), ("critical", DEFAULT_CRITICAL_QUORUM)):
        value = quorum.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 5:
            raise ConfigError(f"{path}: field 'approval.quorum.{key}': expected a whole number from 1 to 5")
        q[key] = value
    identities_raw = section.get("identities") or {}
    if not isinstance(identities_raw, Mapping):
        raise ConfigError(f"{path}: field 'approval.identities': expected a mapping of Slack user ID to a list")
    identities = {str(uid): frozenset(x.lower() for x in _str_list(ids, f"approval.identities.{uid}", path))
                  for uid, ids in identities_raw.items()}
    return ApprovalSettings(
        users=frozenset(users), groups=frozenset(groups), quorum_default=q["default"],
        quorum_critical=q["critical"],
        group_cache_seconds=_seconds(section.get("group_cache", DEFAULT_GROUP_CACHE_SECONDS),
                                     "approval.group_cache", path),
        grace_seconds=_seconds(section.get("grace", DEFAULT_GRACE_SECONDS), "approval.grace", path),
        deny_window_seconds=_window(section.get("deny_window", DEFAULT_DENY_WINDOW_SECONDS), "approval.deny_window",
                                    path),
        identities=identities)


def require_approvers(config: Config, playbooks: Iterable[Any] | None = None) -> None:
    """Refuse to start the Slack approval path with nobody allowed to approve.

    Returns when ``approval.approvers`` (or ``slack.approvers``) in ``cordon.yaml`` names a user
    or a user group, or when every playbook (``playbooks``, default: those in
    ``config.playbooks_dir``) whose ``approval.required`` is true names its own. Otherwise raises
    :class:`cordon.config.ConfigError` naming the file, the playbooks without approvers and the fix.
    Also raises what :func:`load_settings` and the playbook loader raise for a bad configuration."""
    settings = load_settings(config)
    if settings.users or settings.groups:
        return
    if playbooks is None:
        from cordon.playbooks.schema import load_playbooks

        playbooks = load_playbooks(config.playbooks_dir)
    playbooks = list(playbooks)
    missing = sorted(pb.name for pb in playbooks if pb.approval.required
                     and not (pb.approval.approvers.users or pb.approval.approvers.groups))
    if not missing:
        return
    path = config.directory / "cordon.yaml"
    if len(missing) == sum(1 for pb in playbooks if pb.approval.required):
        which = "nor does any playbook name one"
    else:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        which = f"and playbook(s) {shown} name none"
    raise ConfigError(
        f"{path}: no Slack approvers configured (field 'approval.approvers'), {which}: nobody could approve "
        "containment in Slack. Set approval.approvers.users (Slack user IDs, U...) and/or "
        f"approval.approvers.groups (user group IDs, S...) in {path} or in each playbook's approval block. "
        "The sandbox, console and auto paths need no approvers.")


@dataclass(frozen=True)
class Policy:
    """The policy for one request: allowed ``users`` and ``groups`` (Slack IDs), the ``quorum``
    of distinct approvals, and ``escalate_to`` (allowed once the request was escalated).
    ``configured`` is false when no approver is named at all: then nobody may approve (closed
    by default)."""

    users: frozenset[str]
    groups: frozenset[str]
    quorum: int
    escalate_to: str | None = None

    @property
    def configured(self) -> bool:
        return bool(self.users or self.groups)


def quorum_for(settings: ApprovalSettings, approval: Approval | None, severity: str | None) -> int:
    """Distinct approvals needed: the playbook's ``quorum`` when set, else
    ``settings.quorum_critical`` for a ``critical`` detection and ``settings.quorum_default``
    otherwise."""
    if approval is not None and approval.quorum is not None:
        return approval.quorum
    return settings.quorum_critical if (severity or "").lower() == "critical" else settings.quorum_default


def policy_for(settings: ApprovalSettings, approval: Approval | None, severity: str | None) -> Policy:
    """The :class:`Policy` for a playbook's ``approval`` block and a detection ``severity``:
    global and playbook approvers together, the quorum of :func:`quorum_for`."""
    users, groups = set(settings.users), set(settings.groups)
    if approval is not None:
        users |= set(approval.approvers.users)
        groups |= set(approval.approvers.groups)
    return Policy(frozenset(users), frozenset(groups), quorum_for(settings, approval, severity),
                  approval.escalate_to if approval is not None else None)


# -- identities -------------------------------------------------------------------------------
def _forms(value: str) -> set[str]:
    """``value`` lower-cased, and for an ARN (``arn:aws:iam::1:user/path/alice``) or a
    ``principal://`` style path also its last segment (``alice``); GCP ``user:``/``serviceAccount:``
    member prefixes are dropped."""
    v = value.strip().lower()
    if not v:
        return set()
    out = {v}
    for prefix in ("user:", "serviceaccount:", "group:"):
        if v.startswith(prefix):
            out.add(v[len(prefix):])
    if v.startswith("arn:") and "/" in v:
        out.add(v.rsplit("/", 1)[-1])
    return out


def principal_names(detection: Mapping[str, Any]) -> set[str]:
    """Every name of the principals under investigation in ``detection``
    (``Detection.model_dump(mode="json")`` or ``summary()``): ``uid`` and ``name`` of
    ``actor.user``, ``target`` and ``credential.owner``, lower-cased, ARNs also by their last path
    segment (the IAM user name)."""
    names: set[str] = set()
    actor = detection.get("actor") or {}
    credential = detection.get("credential") or {}
    for who in (actor.get("user") or {}, detection.get("target") or {}, credential.get("owner") or {}):
        if not isinstance(who, Mapping):
            continue
        for key in ("uid", "name"):
            if who.get(key):
                names |= _forms(str(who[key]))
    return names


def identity_forms(email: str | None, explicit: Iterable[str] = ()) -> set[str]:
    """The cloud identities a Slack user stands for: their profile ``email`` (a UPN or a Google
    account is usually the same address) and its local part (an IAM user name is usually that),
    plus the ``explicit`` mapping from ``approval.identities`` (each with :func:`_forms`)."""
    out: set[str] = set()
    if email:
        e = email.strip().lower()
        out |= {e, e.split("@", 1)[0]}
    for x in explicit:
        out |= _forms(x)
    return out


def requested_by(detection: Mapping[str, Any]) -> dict[str, str]:
    """Who asked for a manual run: ``detection.raw["requested_by"]`` (``slack_user_id``,
    ``email``, ``cli_user``; any may be missing), ``{}`` for a detection from a log."""
    raw = detection.get("raw") or {}
    who = raw.get("requested_by") if isinstance(raw, Mapping) else None
    if not isinstance(who, Mapping):
        return {}
    return {k: str(who[k]) for k in ("slack_user_id", "email", "cli_user") if who.get(k)}


def self_approval_reason(user_id: str, user_name: str | None, identities: set[str],
                         detection: Mapping[str, Any]) -> str | None:
    """Why ``user_id`` may not decide on ``detection``, or ``None``.

    Refused: a clicker whose Slack user name or any of ``identities`` (:func:`identity_forms`)
    names a principal of the detection (:func:`principal_names`), and the person who requested a
    manual run (:func:`requested_by`: the same Slack user, the same e-mail, or an identity equal
    to the CLI user)."""
    principals = principal_names(detection)
    mine = set(identities)
    if user_name:
        mine.add(user_name.lower())
    hit = sorted(mine & principals)
    if hit:
        return f"no self-approval: you ({hit[0]}) are a principal under investigation in this detection"
    req = requested_by(detection)
    if req.get("slack_user_id") and req["slack_user_id"] == user_id:
        return "no self-approval: you requested this run"
    if req.get("email") and req["email"].lower() in identities:
        return "no self-approval: you requested this run (same e-mail)"
    if req.get("cli_user") and req["cli_user"].lower() in identities:
        return f"no self-approval: you requested this run (as {req['cli_user']} on the command line)"
    return None


# -- Slack look-ups ---------------------------------------------------------------------------
def is_directory_group(group: str) -> bool:
    """Whether ``group`` is kept in another channel's directory (``<directory>:<group id>``, e.g.
    the Teams integration's ``entra:<group object id>``, :mod:`cordon.teams.directory`) rather
    than a Slack user group (``S...``, never with a colon)."""
    return ":" in group


def _foreign(user_id: str) -> bool:
    """A clicker of another channel than Slack (``<channel>:<id>``, e.g. ``teams:<object id>``),
    resolved by that channel's directory (:func:`cordon.approvals.decide.make_decider`'s
    ``directories``)."""
    return ":" in user_id and not user_id.startswith("slack:")


def _source(directory: Any) -> str:
    """What ``directory`` asks, for a refusal's words: its ``source`` (default ``Slack``)."""
    return str(getattr(directory, "source", "Slack"))


class CachedDirectory:
    """A thread-safe cache of look-ups, each kept for ``ttl`` seconds by ``clock()`` (seconds,
    default :func:`time.monotonic`; a test passes its own). A failed look-up is not cached."""

    def __init__(self, *, ttl: float = DEFAULT_GROUP_CACHE_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self.clock = clock
        self._cache: dict[tuple[str, str], tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def _cached(self, key: tuple[str, str], fetch: Callable[[], Any]) -> Any:
        now = self.clock()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and now - hit[0] < self.ttl:
                return hit[1]
        value = fetch()
        with self._lock:
            self._cache[key] = (now, value)
        return value


class SlackDirectory(CachedDirectory):
    """Slack users and user groups, looked up through ``client`` and kept for ``ttl`` seconds.

    ``clock()`` returns seconds (default :func:`time.monotonic`; a test passes its own).
    ``group_members`` calls ``usergroups.users.list`` and ``email`` calls ``users.info``; both raise
    ``slack_sdk.errors.SlackApiError`` when Slack refuses (``no_such_subteam``, ``user_not_found``,
    ``ratelimited`` once the client's retries are spent). Thread-safe.
    """

    def __init__(self, client: WebClient, *, ttl: float = DEFAULT_GROUP_CACHE_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__(ttl=ttl, clock=clock)
        self.client = client

    def group_members(self, group_id: str) -> frozenset[str]:
        """User IDs in the user group ``group_id`` (``S...``)."""
        def fetch() -> frozenset[str]:
            resp = self.client.usergroups_users_list(usergroup=group_id)
            return frozenset(resp.get("users") or [])

        return self._cached(("group", group_id), fetch)

    def email(self, user_id: str) -> str | None:
        """The profile e-mail of ``user_id`` (``None`` when the profile has none)."""
        def fetch() -> str | None:
            resp = self.client.users_info(user=user_id)
            return ((resp.get("user") or {}).get("profile") or {}).get("email")

        return self._cached(("email", user_id), fetch)

    def is_member(self, user_id: str, groups: Iterable[str]) -> str | None:
        """The first of ``groups`` that ``user_id`` belongs to, or ``None``. Another directory's
        groups (``<directory>:<id>``, :func:`is_directory_group`) are not Slack's and are skipped."""
        for g in sorted(g for g in groups if not is_directory_group(g)):
            if user_id in self.group_members(g):
                return g
        return None


def allowed_reason(user_id: str, policy: Policy, directory: SlackDirectory | None, *,
                   escalated: bool = False) -> str | None:
    """Why ``user_id`` is not an allowed approver under ``policy``, or ``None`` when allowed
    (after escalation ``policy.escalate_to``, a user, a Slack user group ``S...`` or an Entra group
    ``entra:<object id>``, is allowed too). A policy naming no approver allows nobody. Group
    membership needs ``directory`` (a :class:`SlackDirectory`, or for a Teams clicker ``teams:<oid>``
    a :class:`cordon.teams.directory.EntraDirectory`); without one, a policy that names groups only
    allows its listed users. A directory that fails is a refusal naming Slack, or Entra ID (Microsoft
    Graph) for a Teams clicker."""
    if not policy.configured:
        return ("no approvers are configured for this playbook, so nobody may approve: set "
                "approval.approvers.users / groups in cordon.yaml or in the playbook's approval block")
    if user_id in policy.users:
        return None
    groups = set(policy.groups)
    if escalated and policy.escalate_to:
        if policy.escalate_to == user_id:
            return None
        if policy.escalate_to.startswith("S") or is_directory_group(policy.escalate_to):
            groups.add(policy.escalate_to)
    if groups and directory is not None:
        try:
            if directory.is_member(user_id, groups):
                return None
        except Exception as exc:  # noqa: BLE001 - SlackApiError, ODataError or transport: refuse, say why
            if _foreign(user_id):
                return f"cannot resolve the approver groups with {_source(directory)} ({type(exc).__name__}: {exc})"
            return f"cannot resolve the approver user groups with Slack ({type(exc).__name__}: {exc})"
    return f"<@{user_id}> is not an approver for this playbook"


def check_clicker(user_id: str, user_name: str | None, *, policy: Policy, settings: ApprovalSettings,
                  detection: Mapping[str, Any], directory: SlackDirectory | None,
                  escalated: bool = False) -> str | None:
    """The whole check for one clicker: allowed (:func:`allowed_reason`) and not a principal nor
    the requester (:func:`self_approval_reason`, with the profile e-mail from ``directory`` and the
    explicit ``settings.identities``). Returns the refusal reason or ``None``.

    The clicker's identity must be resolved, never guessed from the Slack user name: a failed
    Slack look-up of the e-mail is a refusal (we cannot show the clicker is not the actor), and so
    is having neither an e-mail (no ``directory``, i.e. no bot token; or a profile without one, e.g.
    without the ``users:read.email`` scope) nor an explicit ``approval.identities`` entry."""
    reason = allowed_reason(user_id, policy, directory, escalated=escalated)
    if reason:
        return reason
    explicit = settings.identities.get(user_id) or frozenset()
    email = None
    if directory is not None:
        try:
            email = directory.email(user_id)
        except Exception as exc:  # noqa: BLE001 - SlackApiError, ODataError or transport: refuse, say why
            if _foreign(user_id):
                return (f"cannot look up your user in {_source(directory)} to rule out self-approval "
                        f"({type(exc).__name__})")
            return f"cannot look up your Slack profile to rule out self-approval ({type(exc).__name__})"
    if not email and not explicit:
        if _foreign(user_id):
            why = (f"Cordon has no directory for {user_id.split(':', 1)[0]} clickers to read your user in"
                   if directory is None else f"your user in {_source(directory)} shows Cordon no e-mail")
        else:
            why = ("Cordon has no Slack bot token to read your profile (users.info)" if directory is None
                   else "your Slack profile shows Cordon no e-mail (users:read.email)")
        return (f"cannot resolve your identity to rule out self-approval: {why}, and approval.identities in "
                f"cordon.yaml has no entry for {user_id}; ask an administrator to add one")
    identities = identity_forms(email, explicit)
    return self_approval_reason(user_id, user_name, identities, detection)
