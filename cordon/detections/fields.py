"""Helpers every record parser shares, whichever cloud it reads: typed dotted-path access that names
the field in its errors (:class:`RecordFields`, raising :class:`RecordError`), timestamps
(:func:`parse_time`), JSON type names for messages, the detection uid, the OCSF severity label of a
Sigma ``level``, and the shape of a Sigma match (:class:`SigmaMatchLike`)."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Protocol

from cordon.detections.errors import RecordError
from cordon.detections.model import SEVERITY_IDS, canonical_json

_TIME = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?\s*(Z|z|[+-]\d{2}:?\d{2})?$"
)


def parse_time(value: str) -> datetime:
    """Parse a log timestamp to an aware UTC ``datetime``.

    Accepts ISO 8601 as CloudTrail, GuardDuty and ASFF write it (``2024-07-30T21:53:13Z``,
    ``2020-10-23T12:22:41.296Z``, ``...+00:00``) and the space-separated form Panther's test logs
    use (``2022-09-27 17:09:18``, ``2023-01-03 01:52:07.000000000``); fractions longer than
    microseconds are cut; no offset means UTC. Raises ``ValueError`` for anything else.
    """
    m = _TIME.match(value.strip())
    if not m:
        raise ValueError(f"not an ISO 8601 timestamp: {value!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    frac = (m.group(7) or "0")[:6].ljust(6, "0")
    tz = m.group(8)
    if tz is None or tz in ("Z", "z"):
        tzinfo = UTC
    else:
        sign = -1 if tz[0] == "-" else 1
        digits = tz[1:].replace(":", "")
        tzinfo = timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))
    dt = datetime(year, month, day, hour, minute, second, int(frac), tzinfo=tzinfo)
    return dt.astimezone(UTC)


def type_name(value: Any) -> str:
    """JSON's name for the type of ``value`` (``object``, ``array``, ``string``, ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


_TYPE_LABELS = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", float: "a number"}


class RecordFields:
    """Typed access to a record's fields by dotted path, raising :class:`RecordError` that names
    the input, the record's position and the dotted field at fault."""

    def __init__(self, record: Any, origin: str, position: int):
        self.origin = origin
        self.position = position
        if not isinstance(record, dict):
            raise RecordError(origin, position, None, f"expected a JSON object, got {type_name(record)}")
        self.record = record

    def error(self, field: str | None, reason: str) -> RecordError:
        """A :class:`RecordError` for ``field`` of this record."""
        return RecordError(self.origin, self.position, field, reason)

    def get(
        self,
        path: str,
        kind: type | tuple[type, ...],
        *,
        required: bool = False,
        base: dict[str, Any] | None = None,
        prefix: str = "",
    ) -> Any:
        """The value at dotted ``path`` (``None`` when absent or null), checked to be ``kind``.

        ``float`` as ``kind`` accepts ints too (never booleans). Every object on the way must be
        an object or absent. ``required`` makes absence or null an error. ``base`` / ``prefix``
        read relative to a nested object whose own dotted path is ``prefix``.
        """
        node: Any = self.record if base is None else base
        parts = path.split(".")
        walked = prefix
        for i, part in enumerate(parts):
            walked = f"{walked}.{part}" if walked else part
            if not isinstance(node, dict):
                parent = walked.rsplit(".", 1)[0]
                raise self.error(parent, f"expected an object, got {type_name(node)}")
            node = node.get(part)
            if node is None:
                if required:
                    why = "missing" if i == len(parts) - 1 else f"missing ({walked} is absent or null)"
                    raise self.error(f"{prefix}.{path}" if prefix else path, f"required field {why}")
                return None
        wanted = kind if isinstance(kind, tuple) else (kind,)
        accepted = (*wanted, int) if float in wanted else wanted
        if not isinstance(node, accepted) or (isinstance(node, bool) and bool not in wanted):
            labels = " or ".join(_TYPE_LABELS.get(k, k.__name__) for k in wanted)
            raise self.error(walked, f"expected {labels}, got {type_name(node)}")
        return node

    def time(self, path: str, *, required: bool = True) -> datetime | None:
        """The timestamp at ``path`` parsed with :func:`parse_time`."""
        raw = self.get(path, str, required=required)
        if raw is None:
            return None
        try:
            return parse_time(raw)
        except ValueError as exc:
            raise self.error(path, str(exc)) from None

    def flag(self, path: str) -> bool | None:
        """A boolean that AWS writes either as a JSON boolean or as ``"true"`` / ``"false"``."""
        raw = self.get(path, (bool, str))
        if raw is None or isinstance(raw, bool):
            return raw
        low = raw.strip().lower()
        if low in ("true", "false"):
            return low == "true"
        raise self.error(path, f"expected 'true' or 'false', got {raw!r}")


def detection_uid(record: dict[str, Any], rule_uid: str | None) -> str:
    """First 32 hex digits of SHA-256 over the canonical record and the rule id: the same record
    matched by the same rule always gives the same uid."""
    return hashlib.sha256(f"{canonical_json(record)}\n{rule_uid or ''}".encode()).hexdigest()[:32]


def severity_label(level: Any) -> str:
    """An OCSF severity label from a Sigma ``level`` (``informational`` .. ``critical``);
    anything else is ``unknown``."""
    if isinstance(level, str) and level.strip().lower() in SEVERITY_IDS:
        return level.strip().lower()
    return "unknown"


class SigmaMatchLike(Protocol):
    """What a parser reads from a Sigma match
    (``cordon.sigma.RuleSet.match`` returns objects with these attributes)."""

    id: str
    title: str
    path: str | None
    level: str | None
    technique_ids: list[str]
