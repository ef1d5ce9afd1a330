"""Fuzzing the intake (issue 10, item 3) with hypothesis over mutated corpus records: the examples
shipped with Cordon and, when ``../shared`` is beside the checkout, real CloudTrail events from
``../shared/data/real`` (read from there, never copied). Each example is a JSON-lines input of a
few mutated records (values replaced by lists, numbers, null, deep nesting, huge or surrogate
strings; keys duplicated; text truncated or with bytes inserted) read with the shipped Sigma rules.

Asserted for every input: no exception escapes, every record ends counted exactly once
(:class:`DetectStats`' invariant) and every dead letter names its origin and position.

``CORDON_FUZZ_EXAMPLES`` sets the number of examples (default 300, derandomized so CI is
reproducible; the nightly-sized run is ``CORDON_FUZZ_EXAMPLES=10000``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cordon.detections.errors import Rejected
from cordon.detections.intake import read_bytes
from cordon.detections.pipeline import DetectStats, detect
from cordon.providers import shipped_rule_dirs
from cordon.sigma import RuleSet
from tests.conftest import SHARED_DATA

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = int(os.environ.get("CORDON_FUZZ_EXAMPLES", "300"))


def _corpus() -> list[dict]:
    records: list[dict] = []
    for path in sorted((REPO / "examples").glob("*.json")):
        doc = json.loads(path.read_text())
        records.extend(doc.get("Records", [doc]) if isinstance(doc, dict) else doc)
    real = sorted(SHARED_DATA.rglob("*.json"))[:200] if SHARED_DATA.exists() else []
    for path in real:
        try:
            doc = json.loads(path.read_text(errors="replace"))
        except (ValueError, OSError):
            continue
        items = doc.get("Records", [doc]) if isinstance(doc, dict) else doc if isinstance(doc, list) else []
        records.extend(r for r in items[:5] if isinstance(r, dict) and ("eventName" in r or "protoPayload" in r))
        if len(records) > 150:
            break
    return [r for r in records if isinstance(r, dict)]


CORPUS = _corpus()
RULES = RuleSet.load(shipped_rule_dirs())


def _deep(n: int) -> object:
    v: object = "x"
    for _ in range(n):
        v = [v]
    return v


VALUES = st.one_of(
    st.none(), st.integers(), st.floats(allow_nan=False), st.booleans(), st.text(max_size=20),
    st.lists(st.text(max_size=5), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.integers(60, 400).map(_deep), st.integers(60_000, 70_000).map(lambda n: "a" * n),
    st.just("\ud800"),
)


def _paths(obj: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    return out


def _set(obj: dict, path: tuple, value: object) -> dict:
    obj = json.loads(json.dumps(obj))
    cur = obj
    for k in path[:-1]:
        cur = cur[k]
    cur[path[-1]] = value
    return obj


@st.composite
def mutated_line(draw) -> bytes:
    record = draw(st.sampled_from(CORPUS))
    kind = draw(st.sampled_from(["value", "value", "duplicate", "truncate", "bytes", "deep", "intact"]))
    if kind == "value":
        paths = _paths(record)
        record = _set(record, draw(st.sampled_from(paths)), draw(VALUES)) if paths else record
    text = json.dumps(record, ensure_ascii=False).encode("utf-8", "surrogatepass")
    if kind == "duplicate" and record:
        key = json.dumps(draw(st.sampled_from(sorted(record)))).encode()
        text = b"{" + key + b": null, " + text[1:]
    elif kind == "truncate":
        text = text[: draw(st.integers(0, len(text)))]
    elif kind == "deep":  # nested past what Python's json can decode at all
        text = b'{"eventName": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    elif kind == "bytes":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.binary(min_size=1, max_size=4)).replace(b"\n", b" ") + text[at:]
    return text


@pytest.mark.skipif(not CORPUS, reason="no corpus records")
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(mutated_line(), min_size=1, max_size=4))
def test_every_mutated_record_is_accounted_for(lines):
    body = b"\n".join(lines) + b"\n"
    stats = DetectStats()
    out = list(detect(read_bytes("fuzz.jsonl", body), RULES, stats))
    s = stats
    assert s.records_read == s.rejected + s.events_unmatched + s.records_detected + s.records_empty, s
    rejected = [x for x in out if isinstance(x, Rejected)]
    assert len(rejected) == s.rejected
    assert all(r.origin == "fuzz.jsonl" and r.position is not None and r.reason for r in rejected), rejected
