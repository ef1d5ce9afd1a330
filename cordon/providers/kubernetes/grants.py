"""Kubernetes' grant, generated from what the Kubernetes actions declare: a ClusterRole
(https://kubernetes.io/docs/reference/access-authn-authz/rbac/#role-and-clusterrole) whose rules
give each API group's resources exactly the verbs the actions use. An action declares a permission as
``<apiGroup>/<resource>:<verb>`` (the core group is the empty string: ``/secrets:get``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cordon.action import Action
from cordon.permissions import GrantDocument


def cluster_role(actions: Iterable[type[Action]]) -> dict[str, Any]:
    """The ``rbac.authorization.k8s.io/v1`` ClusterRole ``cordon-responder``: one rule per
    (apiGroup, resource) with its verbs, sorted. Raises ``ValueError`` for a permission not written
    ``<apiGroup>/<resource>:<verb>``."""
    verbs: dict[tuple[str, str], set[str]] = {}
    for cls in actions:
        if cls.provider != "kubernetes":
            continue
        for perm in cls.permissions:
            target, sep, verb = perm.rpartition(":")
            group, slash, resource = target.partition("/")  # an API group never holds "/"; a subresource may
            if not sep or not slash or not resource or not verb:
                raise ValueError(f"{cls.name}: permission {perm!r} is not <apiGroup>/<resource>:<verb>")
            verbs.setdefault((group, resource), set()).add(verb)
    rules = [{"apiGroups": [group], "resources": [resource], "verbs": sorted(v)}
             for (group, resource), v in sorted(verbs.items())]
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "cordon-responder",
                         "annotations": {"cordon.dev/generated": "cordon permissions kubernetes, from the actions' "
                                                                 "declared permissions"}},
            "rules": rules}


#: The Kubernetes grant document (YAML, as ``kubectl apply -f`` reads it).
DOCUMENTS = (GrantDocument("kubernetes", lambda config, actions, every: cluster_role(actions), fmt="yaml"),)
