"""One record never stops the input (issue 10, item 3; positions are 0-based record indices):
records nested too deep, with duplicate keys, lone surrogates, oversized fields or non-string
Azure claims end as dead letters naming the record's position and field, and the records around
them are still read and detected, with the shipped Sigma rules. Every record is accounted for
(:class:`DetectStats`' invariant)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cordon.audit.ledger import Ledger
from cordon.detections.errors import Rejected
from cordon.detections.intake import MAX_DEPTH, MAX_FIELD_CHARS, read_bytes
from cordon.detections.pipeline import DetectStats, detect
from cordon.providers import shipped_rule_dirs
from cordon.sigma import RuleSet
from tests.test_azure_detections import activity_rest

REPO = Path(__file__).resolve().parents[1]
EVENT = json.loads((REPO / "examples" / "cloudtrail-create-access-key.json").read_text())


@pytest.fixture(scope="module")
def rules() -> RuleSet:
    return RuleSet.load(shipped_rule_dirs())


def run(rules: RuleSet, body: str) -> tuple[list, list[Rejected], DetectStats]:
    stats = DetectStats()
    out = list(detect(read_bytes("in.jsonl", body.encode("utf-8", "surrogatepass")), rules, stats))
    rejected = [x for x in out if isinstance(x, Rejected)]
    s = stats
    assert s.records_read == s.rejected + s.events_unmatched + s.records_detected + s.records_empty, s
    assert all(r.position is not None for r in rejected), rejected
    return [x for x in out if not isinstance(x, Rejected)], rejected, stats


def nested(depth: int) -> dict:
    """An object ``depth`` levels deep (the record itself is level 1)."""
    inner: dict = {}
    for _ in range(depth - 1):
        inner = {"a": inner}
    return inner


def lines(*records: object) -> str:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n"


def test_json_too_deep_to_decode_is_dead_lettered_and_the_rest_read(rules):
    deep = "[" * 5000 + "]" * 5000
    dets, rejected, stats = run(rules, lines(EVENT, deep, EVENT))
    assert [r.position for r in rejected] == [1] and "MAX_DEPTH" in rejected[0].reason
    assert stats.records_read == 3 and stats.records_detected == 2 and dets


@pytest.mark.parametrize("shape", ["array", "records", "records-one-line"])
def test_too_deep_inside_a_document(rules, shape):
    """A document (over several lines, or CloudTrail's single-line ``{"Records": [...]}``) is read
    item by item: only the record too deep to decode is dead-lettered."""
    deep = "[" * 5000 + "]" * 5000
    items = f"[\n{json.dumps(EVENT)},\n{deep},\n{json.dumps(EVENT)}\n]"
    body = {"array": items, "records": f'{{\n"Records": {items}\n}}',
            "records-one-line": f'{{"Records": [{json.dumps(EVENT)}, {deep}, {json.dumps(EVENT)}]}}'}[shape]
    _, rejected, stats = run(rules, body)
    assert [r.position for r in rejected] == [1] and stats.records_detected == 2, (rejected, stats)


def test_the_depth_limit_names_the_field(rules):
    over = {**EVENT, "requestParameters": nested(MAX_DEPTH)}  # under a key of the record: one level deeper
    at = {**EVENT, "additionalEventData": nested(MAX_DEPTH - 1)}
    _, rejected, stats = run(rules, lines(over, at))
    (rej,) = rejected
    assert rej.position == 0 and rej.field.startswith("requestParameters") and "MAX_DEPTH" in rej.reason
    assert stats.records_detected == 1


def test_lone_surrogate_is_named_and_its_dead_letter_is_stored(rules, tmp_path):
    text = json.dumps({**EVENT, "userAgent": "x"}).replace('"userAgent": "x"', '"userAgent": "\\ud800"')
    _, rejected, stats = run(rules, lines(text, EVENT))
    (rej,) = rejected
    assert rej.field == "userAgent" and "surrogate" in rej.reason and stats.records_detected == 1
    ledger = Ledger(f"sqlite:///{tmp_path}/l.db")
    ledger.dead_letter(rej.origin, rej.position, rej.field, rej.reason, rej.raw_text)
    assert ledger.verify().ok


@pytest.mark.parametrize("value", [["a@b.example"], 42])
@pytest.mark.parametrize("where", ["claims", "identity.claims"])
def test_azure_claims_that_are_not_strings_are_named(rules, value, where):
    upn = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn"
    bad = activity_rest()
    claims = {**bad.pop("claims"), upn: value}
    if where == "claims":
        bad["claims"] = claims
    else:
        bad["identity"] = {"claims": claims}
    dets, rejected, stats = run(rules, lines(activity_rest(), bad, activity_rest()))
    (rej,) = rejected
    assert rej.position == 1 and rej.field == f"{where}.{upn}" and "string" in rej.reason, rej
    assert stats.records_detected == 2


def test_duplicate_keys_are_not_guessed(rules):
    text = json.dumps(EVENT).replace('"eventName": "CreateAccessKey"',
                                     '"eventName": "ListUsers", "eventName": "CreateAccessKey"')
    envelope = '{"detail-type": "AWS API Call via CloudTrail", "detail": {}, "detail": ' + json.dumps(EVENT) + "}"
    _, rejected, stats = run(rules, lines(text, envelope, EVENT))
    assert [(r.position, r.field) for r in rejected] == [(0, "eventName"), (1, "detail")], rejected
    assert all("duplicate key" in r.reason for r in rejected) and stats.records_detected == 1


def test_a_field_over_the_cap_is_named(rules):
    big = {**EVENT, "userAgent": "a" * (MAX_FIELD_CHARS + 1)}
    _, rejected, stats = run(rules, lines(big, EVENT))
    (rej,) = rejected
    assert rej.field == "userAgent" and "MAX_FIELD_CHARS" in rej.reason and stats.records_detected == 1


def test_any_exception_on_one_record_is_a_dead_letter(rules):
    """A bug in matching one record (here a rule matcher that raises ValueError on one event)
    becomes a dead letter with the record's position and the exception; the rest go on."""

    class Flaky:
        def match(self, event, *, product, service):
            if event.get("userAgent") == "boom":
                raise ValueError("matcher bug")
            return rules.match(event, product=product, service=service)

    _, rejected, stats = run(Flaky(), lines(EVENT, {**EVENT, "userAgent": "boom"}, EVENT))
    (rej,) = rejected
    assert rej.position == 1 and "ValueError" in rej.reason and "matcher bug" in rej.reason
    assert stats.records_detected == 2
