"""From raw records to detections: each record kind is read by the provider that declares it
(:func:`cordon.providers.source_for`): events are matched by Sigma rules under the provider's
logsource, findings map directly.

:func:`detect` consumes what :func:`cordon.detections.intake.read_inputs` yields and produces
:class:`Detection` and :class:`Rejected`, counting as it goes in a :class:`DetectStats`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from pydantic import ValidationError

from cordon.detections.errors import RecordError, Rejected
from cordon.detections.intake import RawRecord, cap_text
from cordon.detections.model import Detection
from cordon.providers import source_for


class RuleMatcher(Protocol):
    """What :func:`detect` needs from a rule set (``cordon.sigma.RuleSet``)."""

    def match(self, event: dict[str, Any], *, product: str, service: str, **normalise: Any) -> list[Any]:
        """The rules that match ``event`` under the logsource; ``normalise=`` (a
        :class:`cordon.sigma.normalise.FieldNormalisation`) is passed only for sources that declare one."""
        ...


@dataclass
class DetectStats:
    """Counts kept by :func:`detect`.

    ``records_read``: records received (RawRecord and Rejected from intake); ``events``: CloudTrail
    events, Cloud Audit Log entries, Entra audit and sign-in records and Activity Log events among
    them; ``events_matched`` / ``events_unmatched``:
    events that some / no Sigma rule matched; ``findings``: GuardDuty, Security Hub and SCC
    findings; ``detections``: Detections yielded (one per matching rule for events; a
    ``SetIamPolicy`` entry or an SCC grant finding gives one per granted binding), of which
    ``suppressed``; ``rejected``: Rejected yielded
    (from intake and from parsers); ``records_detected``: records that gave at least one Detection;
    ``records_empty``: events some rule matched and findings that gave none (e.g. a ``SetIamPolicy``
    that grants nothing).

    Every record read ends counted exactly once:
    ``records_read == rejected + events_unmatched + records_detected + records_empty``, and
    ``events + findings + rejected == records_read`` (a record its parser rejects is counted as
    rejected only, not as an event or finding).
    """

    records_read: int = 0
    events: int = 0
    events_matched: int = 0
    events_unmatched: int = 0
    findings: int = 0
    detections: int = 0
    suppressed: int = 0
    rejected: int = 0
    records_detected: int = 0
    records_empty: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counts as a plain dict (for JSON output)."""
        return asdict(self)


def _record_text(record: Any) -> str:
    try:
        return cap_text(json.dumps(record, ensure_ascii=False, default=str))
    except (ValueError, TypeError, RecursionError) as exc:  # intake caps depth; this is the last guard
        return f"<record not serialisable as JSON: {type(exc).__name__}>"


def _unexpected(item: RawRecord, exc: Exception) -> Rejected:
    """The dead letter for an exception other than :class:`RecordError` raised on one record."""
    where = f" (line {item.line})" if item.line is not None else ""
    detail = str(exc)
    if isinstance(exc, ValidationError):
        errs = exc.errors()
        loc = ".".join(str(p) for p in errs[0]["loc"]) if errs else "?"
        detail = f"the detection's field {loc!r}: {errs[0]['msg'] if errs else exc}"
    reason = f"unexpected {type(exc).__name__} while reading this {item.kind} record{where}: {detail}"
    return Rejected(origin=item.origin, position=item.position, field=None, reason=reason[:2000],
                    raw_text=_record_text(item.record))


def detect(
    records: Iterable[RawRecord | Rejected], rules: RuleMatcher, stats: DetectStats | None = None
) -> Iterator[Detection | Rejected]:
    """Turn records into detections.

    Each record goes to the :class:`cordon.providers.Source` declared for its kind. An event is
    matched as ``rules.match(view(record), product=..., service=...)`` with the source's Sigma
    logsource and view (and ``normalise=`` its field normalisation, when it declares one), and every
    match gives the detections of ``source.parse(record, match,
    origin, position)``; an event no rule matches is an ordinary event and yields nothing (it is
    counted). A finding maps directly (``source.parse(record, origin, position)``). Records of a
    source that is not evaluated (sign-ins, say) are counted as unmatched events and yield nothing.
    Rejected records pass through.
    A :class:`RecordError` from a parser or from ``rules.match`` becomes a :class:`Rejected`
    carrying the record's JSON text, and processing continues. Any other exception raised on one
    record (a bug, a pydantic ``ValidationError``, ``RecursionError``) also becomes a
    :class:`Rejected` with the record's origin and position, its line when known and the exception
    in the reason (the detection's field for a ``ValidationError``), and the rest of the input
    goes on: no per-record exception escapes. ``KeyboardInterrupt`` / ``SystemExit`` still do.

    Pass ``stats`` to read the counts (:class:`DetectStats`) while or after iterating.
    """
    stats = stats if stats is not None else DetectStats()
    for item in records:
        stats.records_read += 1
        if isinstance(item, Rejected):
            stats.rejected += 1
            yield item
            continue
        before = (stats.events, stats.events_matched, stats.events_unmatched, stats.findings)
        try:
            produced = list(_detections(item, rules, stats))
        except Exception as exc:  # noqa: BLE001 - one record never stops the rest (issue 10, item 3)
            stats.events, stats.events_matched, stats.events_unmatched, stats.findings = before
            stats.rejected += 1
            if isinstance(exc, RecordError):
                yield Rejected.from_error(exc, _record_text(item.record))
            else:
                yield _unexpected(item, exc)
            continue
        if produced:
            stats.records_detected += 1
        elif stats.events_unmatched == before[2]:
            stats.records_empty += 1
        for det in produced:
            stats.detections += 1
            if det.suppressed:
                stats.suppressed += 1
            yield det


def _detections(item: RawRecord, rules: RuleMatcher, stats: DetectStats) -> Iterator[Detection]:
    """The detections of one record, by the :class:`cordon.providers.Source` that reads its kind."""
    try:
        source = source_for(item.kind)
    except KeyError as exc:
        raise RecordError(item.origin, item.position, None, str(exc)) from None
    if not source.evaluated:  # counted as an event no rule is evaluated on
        stats.events += 1
        stats.events_unmatched += 1
        return
    if source.sigma is None:  # a finding: mapped directly
        stats.findings += 1
        yield from _as_detections(source.parse(item.record, item.origin, item.position))
        return
    stats.events += 1
    product, service, *category = source.sigma
    try:
        event = source.view(item.record) if source.view else item.record
    except RecordError as exc:  # a view names the field; the record's place is known here
        raise RecordError(item.origin, item.position, exc.field, exc.reason) from None
    extra: dict[str, Any] = {"category": category[0]} if category else {}
    if source.normalise is not None:
        extra["normalise"] = source.normalise
    matches = rules.match(event, product=product, service=service, **extra)
    if not matches:
        stats.events_unmatched += 1
        return
    stats.events_matched += 1
    for match in matches:
        yield from _as_detections(source.parse(item.record, match, item.origin, item.position))


def _as_detections(produced: Detection | Iterable[Detection] | None) -> Iterator[Detection]:
    if produced is None:
        return
    if isinstance(produced, Detection):
        yield produced
    else:
        yield from produced


__all__ = ["DetectStats", "RuleMatcher", "detect"]
