"""Google SecOps (Chronicle) detection objects: parsing only (issue 17, unfinished).

Follows the detection shape documented in chronicle/api-samples-python
``detect/v2/stream_detection_alerts.py`` (a batch is ``{"detections": [...]}``;
each detection has ``type``, ``id``, ``detectionTime``, ``detection[]`` with
``ruleId``/``ruleName``/``ruleVersion``, and ``collectionElements[].references[].event``
holding camelCase UDM events).

Not yet done: mapping UDM events to Cordon Detections, key resolution, the
``chronicle`` sensor, the stand-in and the webhook route.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

DETECTION_TYPES = ("RULE_DETECTION", "GCTI_FINDING")


class MalformedDetection(ValueError):
    """A detection object lacks a required field; names file, position and field."""

    def __init__(self, origin: str, position: int, field_name: str) -> None:
        super().__init__(f"{origin}#{position}: missing or invalid {field_name}")
        self.origin, self.position, self.field = origin, position, field_name


@dataclass(frozen=True)
class ChronicleDetection:
    """One parsed detection: id, rule id/name/version, time and its UDM events."""

    id: str
    type: str
    rule_id: str
    rule_name: str
    rule_version: str
    detection_time: str
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def dedup_key(self) -> str:
        """``id@ruleVersion``: a new rule version is a new delivery."""
        return f"{self.id}@{self.rule_version}"


def parse_detection(obj: Any, origin: str = "<input>", position: int = 0) -> ChronicleDetection:
    """Parse one detection object; raises MalformedDetection naming the field."""
    if not isinstance(obj, dict):
        raise MalformedDetection(origin, position, "detection object")
    for name in ("id", "detectionTime"):
        if not isinstance(obj.get(name), str) or not obj[name]:
            raise MalformedDetection(origin, position, name)
    if obj.get("type") not in DETECTION_TYPES:
        raise MalformedDetection(origin, position, "type")
    rules = obj.get("detection")
    if not isinstance(rules, list) or not rules or not isinstance(rules[0], dict):
        raise MalformedDetection(origin, position, "detection[0]")
    rule = rules[0]
    if not isinstance(rule.get("ruleName"), str):
        raise MalformedDetection(origin, position, "detection[0].ruleName")
    events = []
    for element in obj.get("collectionElements") or []:
        for ref in element.get("references") or []:
            if not isinstance(ref.get("event"), dict):
                raise MalformedDetection(origin, position, "collectionElements[].references[].event")
            events.append(ref["event"])
    return ChronicleDetection(
        id=obj["id"], type=obj["type"], rule_id=str(rule.get("ruleId", "")),
        rule_name=rule["ruleName"], rule_version=str(rule.get("ruleVersion", "")),
        detection_time=obj["detectionTime"], events=events,
    )


def parse_text(text: str, origin: str = "<input>") -> list[ChronicleDetection]:
    """Parse JSON (one object, a list, or a ``{"detections": [...]}`` page) or JSON lines."""
    try:
        data = json.loads(text)
        items = data.get("detections", [data]) if isinstance(data, dict) else data
    except json.JSONDecodeError:
        items = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [parse_detection(o, origin, i) for i, o in enumerate(items)]
