"""Sigma rules for ``product: kubernetes`` that can never match an audit Event, found when rules load.

An audit Event (``audit.k8s.io/v1``, https://kubernetes.io/docs/reference/config-api/apiserver-audit.v1/#audit-k8s-io-v1-Event)
has the top-level fields in :data:`EVENT_FIELDS`; a rule selecting on another one (SigmaHQ's
top-level ``apiGroup``, which Events carry as ``objectRef.apiGroup``; flat ``hostPath`` /
``capabilities``, which live deep in ``requestObject.spec``) or comparing ``responseStatus.code``
(an HTTP status number) with a word (``'ALLOW'``) can never fire. Only selections that must hold
for the rule to match are judged (an identifier used under ``not`` is not).
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any

from sigma.types import SigmaString

EVENT_FIELDS = frozenset({
    "kind", "apiVersion", "level", "auditID", "stage", "requestURI", "verb", "user", "impersonatedUser",
    "sourceIPs", "userAgent", "objectRef", "responseStatus", "requestObject", "responseObject",
    "requestReceivedTimestamp", "stageTimestamp", "annotations",
})
_HINTS = {"apiGroup": "objectRef.apiGroup", "hostPath": "requestObject.spec.volumes.hostPath",
          "capabilities": "requestObject.spec.containers.securityContext.capabilities"}


def _items(detection: Any) -> list[Any]:
    out = []
    for item in getattr(detection, "detection_items", []) or []:
        out.extend(_items(item) if hasattr(item, "detection_items") else [item])
    return out


def rule_problem(sigma_rule: Any) -> str | None:
    """Why ``sigma_rule`` (a pySigma ``SigmaRule``) can never match an audit Event, or ``None``."""
    conditions = " ".join(str(c) for c in sigma_rule.detection.condition)
    negated = re.findall(r"\bnot\s+(?:1 of\s+|all of\s+|any of\s+)?([\w*]+)", conditions)
    for name, detection in sigma_rule.detection.detections.items():
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in negated):
            continue
        for item in _items(detection):
            field = item.field
            if not field:
                continue
            top = field.split(".", 1)[0]
            if top not in EVENT_FIELDS:
                hint = f" (an Event has it as {_HINTS[top]})" if top in _HINTS else ""
                return f"selection '{name}' names field '{field}', which no audit Event has{hint}"
            if field == "responseStatus.code":
                words = [str(v) for v in item.value
                         if isinstance(v, SigmaString) and not str(v).strip().lstrip("-").isdigit()]
                if words:
                    return (f"selection '{name}' compares responseStatus.code (an HTTP status number) with "
                            f"{', '.join(map(repr, words))}")
    return None
