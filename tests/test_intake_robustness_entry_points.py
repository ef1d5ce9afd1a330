"""One record never stops the input (issue 10, item 3), through the entry points a user reaches:
files read by :func:`~cordon.detections.intake.read_inputs`, webhook bodies read by
:func:`~cordon.detections.intake.read_bytes`, :func:`~cordon.detections.pipeline.detect` with the
shipped Sigma rules (``cordon/providers/<cloud>/rules``), and :meth:`cordon.engine.Responder.intake` writing dead
letters to a real SQLite ledger. Complements ``tests/test_intake_robustness.py`` with: nesting at
the issue's ~1,000 levels and far beyond, read from files in all three layouts, with line numbers
and the kept raw text; the exact field path at ``MAX_DEPTH + 1``; the engine's dead-letter write;
the ``oid`` claim; duplicate keys inside an EventBridge ``detail``, in a Pub/Sub envelope and in its
decoded ``data``, and in pretty-printed (multi-line) documents; the counts of a record that raised
being undone.

The only stand-in is for the rules seam in the last test (``RuleMatcher`` is a Protocol parameter
of ``detect``): no record shape was found whose parser raises anything other than ``RecordError``
(every top-level and nested field of the fixtures and of 60 corpus records set to a list, number,
null, object, NaN, infinity or 10**30 gave only ``RecordError`` dead letters).

Positions are 0-based: the second line of a JSON-lines file is record 1.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from cordon.audit.ledger import Ledger
from cordon.config import load_config
from cordon.detections.errors import Rejected
from cordon.detections.intake import MAX_DEPTH, read_bytes, read_inputs
from cordon.detections.model import Detection
from cordon.detections.pipeline import DetectStats, detect
from cordon.engine import Responder
from cordon.providers import shipped_rule_dirs
from cordon.sigma import RuleSet
from tests.helpers import one_credential_config
from tests.test_azure_detections import activity_rest
from tests.test_intake import ct_event, eventbridge

REPO = Path(__file__).resolve().parents[1]
UPN = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn"
OID = "http://schemas.microsoft.com/identity/claims/objectidentifier"


@pytest.fixture(scope="module")
def rules() -> RuleSet:
    return RuleSet.load(shipped_rule_dirs())


def key_event(i: int, **extra) -> dict:
    """A CreateAccessKey event (matched by the shipped rules) with its own event ID and key."""
    event = ct_event(eventID=f"evt-{i}", **extra)
    event["responseElements"]["accessKey"]["accessKeyId"] = f"AKIAROBUST{i:010d}"
    return event


def check_accounted(stats: DetectStats, out: list) -> None:
    """The DetectStats invariant, the counts against what was yielded, and a position on every
    dead letter (h)."""
    assert stats.records_read == (stats.rejected + stats.events_unmatched + stats.records_detected
                                  + stats.records_empty), stats
    assert stats.events + stats.findings + stats.rejected == stats.records_read, stats
    assert stats.rejected == sum(isinstance(o, Rejected) for o in out)
    assert stats.detections == sum(isinstance(o, Detection) for o in out)
    for o in out:
        if isinstance(o, Rejected):
            assert o.origin and o.position is not None, o


def run_file(path: Path, rules) -> tuple[list, DetectStats]:
    stats = DetectStats()
    out = list(detect(read_inputs([path]), rules, stats))
    check_accounted(stats, out)
    return out, stats


def run_bytes(data: bytes, rules, origin: str = "webhook") -> tuple[list, DetectStats]:
    stats = DetectStats()
    out = list(detect(read_bytes(origin, data), rules, stats))
    check_accounted(stats, out)
    return out, stats


def rejected(out: list) -> list[Rejected]:
    return [o for o in out if isinstance(o, Rejected)]


def detected_positions(out: list) -> set[int]:
    return {o.raw_ref.position for o in out if isinstance(o, Detection)}


def with_raw(record: dict, marker: str, raw: str) -> str:
    """``record`` as JSON text with the string value ``marker`` replaced by the raw JSON ``raw``."""
    text = json.dumps(record)
    assert text.count(json.dumps(marker)) == 1
    return text.replace(json.dumps(marker), raw)


# -- (a) JSON nested too deep for Python's json module --------------------------------------------


@pytest.mark.parametrize("depth", [1_000, 100_000])
@pytest.mark.parametrize("form", ["jsonl", "array", "records"])
def test_record_nested_too_deep_to_decode_is_dead_lettered_and_the_rest_read(tmp_path, rules, form, depth):
    deep = with_raw(key_event(2, requestParameters="@DEEP@"), "@DEEP@", "[" * depth + "]" * depth)
    first, third = json.dumps(key_event(1)), json.dumps(key_event(3))
    if form == "jsonl":
        body = f"{first}\n{deep}\n{third}\n"
    elif form == "array":
        body = f"[\n{first},\n{deep},\n{third}\n]\n"
    else:  # a CloudTrail S3 delivery file
        body = f'{{"Records": [\n{first},\n{deep},\n{third}\n]}}\n'
    p = tmp_path / f"deep.{form}.json"
    p.write_text(body)
    out, stats = run_file(p, rules)
    [bad] = rejected(out)
    assert (bad.origin, bad.position) == (str(p), 1)
    assert "nested deeper than" in bad.reason and "MAX_DEPTH" in bad.reason
    if form == "jsonl":
        assert "(line 2)" in bad.reason
    assert '"evt-2"' in bad.raw_text  # the record is kept as read
    assert detected_positions(out) == {0, 2}  # the record after it is still read
    assert (stats.records_read, stats.records_detected, stats.rejected) == (3, 2, 1)


# -- (b) MAX_DEPTH itself ------------------------------------------------------------------------


def nested_record(depth: int) -> tuple[dict, str]:
    """A CreateAccessKey event nesting ``depth`` levels of objects (the event is level 1, its
    ``requestParameters`` level 2), and the path of its deepest object."""
    inner: dict = {"leaf": 1}
    for _ in range(depth - 3):
        inner = {"a": inner}
    event = key_event(0, requestParameters={"userName": "bob", "a": inner})
    return event, "requestParameters" + ".a" * (depth - 2)


def test_depth_over_max_depth_is_rejected_with_the_field_path(rules):
    event, deepest = nested_record(MAX_DEPTH + 1)
    out, stats = run_bytes(json.dumps(event).encode(), rules)
    [bad] = out
    assert isinstance(bad, Rejected) and bad.position == 0
    assert bad.field == deepest and bad.field.count(".a") == MAX_DEPTH - 1
    assert f"nested deeper than {MAX_DEPTH} levels" in bad.reason and "MAX_DEPTH" in bad.reason
    assert stats.rejected == 1


# -- (c) a lone UTF-16 surrogate ------------------------------------------------------------------


def test_lone_surrogate_is_dead_lettered_and_stored_in_a_sqlite_ledger(tmp_path, rules):
    bad_event = key_event(2, userAgent="aws-cli/2.15.0 \ud800")
    p = tmp_path / "surrogate.jsonl"
    p.write_text("".join(json.dumps(e) + "\n" for e in (key_event(1), bad_event, key_event(3))))  # "\ud800" escape
    assert "\\ud800" in p.read_text()
    out, _ = run_file(p, rules)
    [bad] = rejected(out)
    assert (bad.position, bad.field) == (1, "userAgent") and "surrogate" in bad.reason
    assert "\\ud800" in bad.raw_text and bad.raw_text.encode("utf-8")  # storable as UTF-8
    assert detected_positions(out) == {0, 2}

    # The same input through the engine, which writes dead letters to a real SQLite ledger.
    ledger = Ledger(f"sqlite:///{tmp_path}/ledger.db")
    # the shipped configuration with the records' own cases only (tests.helpers.one_credential: the
    # actor's key is not what this test is about)
    report = Responder(config=load_config(one_credential_config(tmp_path / "config")), ledger=ledger).intake([p])
    assert [(r.position, r.field) for r in report.rejected] == [(1, "userAgent")]
    assert report.records_read == 3 and len(report.cases) == 2
    [row] = ledger.dead_letters()
    assert (row["origin"], row["position"], row["field"]) == (str(p), 1, "userAgent")
    assert "\\ud800" in row["raw_text"] and "surrogate" in row["reason"]
    assert ledger.verify().ok


# -- (d) Azure Activity claims that are not strings ----------------------------------------------


@pytest.mark.parametrize("claim", [UPN, OID])
@pytest.mark.parametrize("value", [["mallory@contoso.com", "eve@contoso.com"], 42], ids=["list", "number"])
@pytest.mark.parametrize("form", ["claims", "identity.claims"])
def test_azure_claim_of_wrong_type_is_rejected_naming_the_claim(rules, form, value, claim):
    bad = activity_rest()
    bad["claims"][claim] = value
    good = activity_rest()
    if form == "identity.claims":  # the storage-account form keeps the claims under identity
        bad["identity"] = {"claims": bad.pop("claims")}
        good["identity"] = {"claims": good.pop("claims")}
    body = {"records": [good, bad, good]}
    out, stats = run_bytes(json.dumps(body).encode(), rules, origin="activity.json")
    [rej] = rejected(out)
    assert rej.position == 1 and rej.field == f"{form}.{claim}"
    assert "expected a string" in rej.reason
    assert detected_positions(out) == {0, 2} and stats.records_detected == 2


# -- (e) duplicate JSON keys ----------------------------------------------------------------------


def test_duplicate_key_in_an_eventbridge_envelope(rules):
    env = json.dumps(eventbridge("AWS API Call via CloudTrail", key_event(2), "aws.iam"))
    env = env[:-1] + ', "detail": ' + json.dumps(key_event(9)) + "}"  # detail twice: which event is meant?
    inner = eventbridge("AWS API Call via CloudTrail", key_event(3), "aws.iam")
    inner_text = json.dumps(inner).replace('"eventSource"', '"eventSource": "sts.amazonaws.com", "eventSource"', 1)
    body = "\n".join([json.dumps(key_event(1)), env, inner_text, json.dumps(key_event(4))]) + "\n"
    out, _ = run_bytes(body.encode(), rules)
    bad = rejected(out)
    assert [(r.position, r.field) for r in bad] == [(1, "detail"), (2, "eventSource")]
    assert all("duplicate" in r.reason for r in bad)
    assert detected_positions(out) == {0, 3}


def test_duplicate_key_in_a_pubsub_envelope(rules):
    data = base64.b64encode(json.dumps(key_event(2)).encode()).decode()
    other = base64.b64encode(json.dumps(key_event(9)).encode()).decode()
    push = (f'{{"message": {{"data": "{data}", "messageId": "1", "data": "{other}"}}, '
            '"subscription": "projects/p/subscriptions/s"}')
    inside = base64.b64encode(json.dumps(key_event(3)).replace('"awsRegion"', '"awsRegion": "x", "awsRegion"', 1)
                              .encode()).decode()
    push_inner = json.dumps({"message": {"data": inside, "messageId": "2"},
                             "subscription": "projects/p/subscriptions/s"})
    body = "\n".join([json.dumps(key_event(1)), push, push_inner, json.dumps(key_event(4))]) + "\n"
    out, _ = run_bytes(body.encode(), rules)
    bad = rejected(out)
    assert [(r.position, r.field) for r in bad] == [(1, "message.data"), (2, "awsRegion")]
    assert all("duplicate" in r.reason for r in bad)
    assert detected_positions(out) == {0, 3}


# Pretty-printed (multi-line) documents are walked member by member (``_read_object``), not decoded
# whole: a repeated key must be refused there too, as it is on one line (before the fix, the last
# value silently won and a second ``Records`` array was dropped unread).


def test_duplicate_key_in_a_pretty_printed_record_is_rejected(rules):
    text = json.dumps(key_event(1), indent=2).replace(
        '"eventName": "CreateAccessKey"', '"eventName": "CreateAccessKey",\n  "eventName": "ListUsers"')
    out, stats = run_bytes((text + "\n" + json.dumps(key_event(2), indent=2)).encode(), rules)
    [bad] = rejected(out)
    assert (bad.position, bad.field) == (0, "eventName") and "duplicate" in bad.reason
    assert detected_positions(out) == {1} and stats.events_unmatched == 0


def test_duplicate_key_in_a_pretty_printed_eventbridge_envelope_is_rejected(rules):
    env = json.dumps(eventbridge("AWS API Call via CloudTrail", key_event(1), "aws.iam"), indent=2)
    env = env.replace('"detail-type"', '"detail": {},\n  "detail-type"', 1)
    out, _ = run_bytes(env.encode(), rules)
    assert [(r.position, r.field) for r in rejected(out)] == [(0, "detail")] and len(out) == 1


def test_second_records_array_of_a_delivery_file_is_dead_lettered_not_dropped(tmp_path, rules):
    first = ",\n".join(json.dumps(key_event(i)) for i in (1, 2))
    second = ",\n".join(json.dumps(key_event(i)) for i in (3, 4))
    p = tmp_path / "delivery.json"
    p.write_text(f'{{\n"Records": [\n{first}\n],\n"Records": [\n{second}\n]\n}}\n')
    out, stats = run_file(p, rules)
    [bad] = rejected(out)
    assert (bad.position, bad.field) == (2, "Records") and "duplicate key 'Records'" in bad.reason
    assert "evt-3" in bad.raw_text and "evt-4" in bad.raw_text  # the second array is kept, not lost
    assert detected_positions(out) == {0, 1} and stats.records_read == 3


# -- (g) any other exception on one record --------------------------------------------------------


class ExplodingRules:
    """Stand-in for the rules seam (``RuleMatcher`` is a Protocol parameter of ``detect``): the
    shipped rules, except that matching the event with ID ``evt-boom`` raises ``ValueError``, as a
    bug in a matcher or a parser would."""

    def __init__(self, rules: RuleSet):
        self.rules = rules

    def match(self, event, *, product, service):
        if event.get("eventID") == "evt-boom":
            raise ValueError("matcher bug on this record")
        return self.rules.match(event, product=product, service=service)


def test_unexpected_exception_on_one_record_is_dead_lettered_and_the_rest_processed(tmp_path, rules):
    boom = ct_event(eventID="evt-boom")
    p = tmp_path / "boom.jsonl"
    p.write_text("".join(json.dumps(e) + "\n" for e in (key_event(1), boom, key_event(3), key_event(4))))
    stats = DetectStats()
    out = list(detect(read_inputs([p]), ExplodingRules(rules), stats))
    check_accounted(stats, out)
    [bad] = rejected(out)
    assert (bad.origin, bad.position, bad.field) == (str(p), 1, None)
    assert "unexpected ValueError" in bad.reason and "matcher bug on this record" in bad.reason
    assert "(line 2)" in bad.reason and json.loads(bad.raw_text)["eventID"] == "evt-boom"
    assert detected_positions(out) == {0, 2, 3}
    # The failed record's partial counts are undone: it is counted as rejected only.
    assert (stats.records_read, stats.events, stats.rejected, stats.records_detected) == (4, 3, 1, 3)
