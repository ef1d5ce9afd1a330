"""Small helpers shared by the tests that drive real processes (Prefect server, workers, servers)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """Call ``predicate`` every ``interval`` s until it returns something truthy (returned), or
    raise ``AssertionError`` naming ``what`` after ``timeout`` s. A wait, not a timed assertion:
    the timeout only bounds how long a broken run takes to fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


#: Slack users of the stand-in's default workspace allowed to approve in tests' configurations.
TEST_APPROVERS = ("U0ALICE01", "U0BOB0002", "U0CAROL03")


def one_credential(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a ``cordon.yaml`` mapping) with ``actor_access: false``: the world of a test about
    something else than the actor (approval policy, recovery, durability, pages, one kind of
    credential...) stays one case per added credential. ``actor_access`` is on by default (the key
    that did it is answered too: tests/test_actor_access*.py and the end-to-end tests of the default
    cover it); with it on, every such test would also get a case for the key or session its record's
    actor signed with, changing its case counts, its Slack messages and its plans."""
    data["actor_access"] = False
    return data


def one_credential_config(dest: Any, **keys: Any) -> Path:
    """A configuration folder ``dest``: the shipped ``cordon.yaml`` (shipped rules and playbooks)
    with :func:`one_credential` and ``keys`` set. Returns the folder."""
    import yaml

    from cordon.config import DEFAULTS

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    data = one_credential(yaml.safe_load((DEFAULTS / "cordon.yaml").read_text()))
    data["playbooks"] = str(DEFAULTS / "playbooks")
    data.update(keys)
    (dest / "cordon.yaml").write_text(yaml.safe_dump(data))
    return dest


def config_with_approvers(dest: Any, users: Any = TEST_APPROVERS, copy_playbooks: bool = False,
                          actor_access: bool = False) -> Any:
    """A configuration folder ``dest/config`` for the Slack path, which needs approvers (closed by
    default): the shipped ``cordon/defaults/cordon.yaml`` with ``approval.approvers.users`` set to
    ``users``, the shipped rules linked, and the shipped playbooks linked as ``dest/playbooks``
    (copied with ``copy_playbooks``, so a test may edit them). ``actor_access`` is off unless asked
    for (:func:`one_credential`: the tests and benchmarks on the Slack path are about approval,
    durability and recovery of one credential's case). Returns the folder; point ``CORDON_CONFIG``
    at it (workers started afterwards inherit it)."""
    import shutil
    from pathlib import Path

    import yaml

    repo = Path(__file__).resolve().parents[1]
    dest = Path(dest)
    cfg = dest / "config"
    cfg.mkdir(parents=True)
    data = yaml.safe_load((repo / "cordon" / "defaults" / "cordon.yaml").read_text())
    data["playbooks"] = "../playbooks"
    data["actor_access"] = actor_access
    data.setdefault("approval", {}).setdefault("approvers", {})["users"] = list(users)
    (cfg / "cordon.yaml").write_text(yaml.safe_dump(data))
    link_shipped_rules(cfg / "rules")
    if copy_playbooks:
        shutil.copytree(repo / "cordon" / "defaults" / "playbooks", dest / "playbooks")
    else:
        (dest / "playbooks").symlink_to(repo / "cordon" / "defaults" / "playbooks")
    return cfg


def link_shipped_rules(folder: Path) -> Path:
    """``folder`` holding every provider's shipped Sigma rules (one symlink per provider:
    ``folder/aws -> cordon/providers/aws/rules``), for a configuration that names a ``rules:`` folder."""
    from cordon.providers import shipped_rule_dirs

    folder.mkdir(parents=True, exist_ok=True)
    for shipped in shipped_rule_dirs():
        (folder / shipped.parent.name).symlink_to(shipped)
    return folder


def with_teams(cfg: Any, standin: Any, *, conversation_id: str = "19:security-approvals@thread.tacv2",
               channel: str | None = None, approvers: Any = (), identities: Any = None) -> Any:
    """Add a ``teams`` section to the configuration folder ``cfg`` (:func:`config_with_approvers`)
    pointing at ``standin`` (a started :class:`cordon.sandbox.teams_standin.TeamsStandIn`: its app
    and tenant ids, OpenID metadata and connector), ``approval.channel`` when given, Teams clickers
    (``teams:<object id>``) added to the approvers, and ``identities`` entries. Returns ``cfg``."""
    from pathlib import Path

    import yaml

    path = Path(cfg) / "cordon.yaml"
    data = yaml.safe_load(path.read_text())
    data["teams"] = {"app_id": standin.app_id, "tenant_id": standin.tenant_id,
                     "openid_metadata_url": standin.openid_metadata_url, "service_url": standin.service_url,
                     "conversation_id": conversation_id}
    approval = data.setdefault("approval", {})
    if channel:
        approval["channel"] = channel
    users = approval.setdefault("approvers", {}).setdefault("users", [])
    users.extend(a for a in approvers if a not in users)
    if identities:
        approval.setdefault("identities", {}).update({k: list(v) for k, v in identities.items()})
    path.write_text(yaml.safe_dump(data))
    return cfg
