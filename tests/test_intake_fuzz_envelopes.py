"""Fuzzing the intake (issue 10, item 3) in every input layout, not only JSON lines.

Complements ``tests/test_intake_fuzz.py`` (JSON lines of CloudTrail and Cloud Audit Log records).
Seeds are bare records of every kind Cordon reads, unwrapped by Cordon's own intake: the project's
fixtures (``examples/``, the records built in ``tests/test_intake.py`` and
``tests/test_azure_detections.py``) and, when ``../shared`` is beside the checkout, the public corpus
in ``../shared/data/real`` (read in place, never copied; see its SOURCES.md): Stratus Red Team
CloudTrail, automated-security-response ASFF in EventBridge events, Cloud Audit Log entries and SCC
notifications, and the ``Tests[].Log`` of Panther's AWS, Azure and GCP rules.

Each example takes 1-4 seeds and mutates them: values replaced by lists, numbers, null, booleans,
objects, nesting 63-5,000 deep, 64 KiB+ strings, lone surrogates; keys repeated or dropped by raw
text edits; then lays them out as JSON lines, a JSON array (one line or pretty-printed), a CloudTrail
``{"Records": [...]}`` file (one line or pretty-printed), concatenated pretty objects, EventBridge
events, Pub/Sub push requests or an Azure Monitor ``{"records": [...]}``; may truncate the text,
insert bytes, or gzip it (whole or cut). Everything is read by ``read_bytes`` and ``detect`` with
the shipped Sigma rules. Asserted for every input:

* no exception escapes; :class:`DetectStats`' invariant holds and its counts match what was yielded;
* every dead letter names the origin and a position, positions never go backwards, and every
  string of a dead letter is storable as UTF-8; every detection serialises to JSON;
* nothing is dropped silently: when only values were replaced (the layout left intact), exactly
  as many records are read as were written;
* a repeated key is never resolved silently: when keys were repeated and nothing else broke the
  text, some dead letter says "duplicate".

``CORDON_FUZZ_EXAMPLES`` sets the number of examples (default 300, derandomized so that CI is
reproducible; ``CORDON_FUZZ_EXAMPLES=10000`` is the nightly-sized run). Totals (inputs, records,
detections, dead letters, seconds) are printed at the end of the module (``pytest -s``) and written
as JSON to ``CORDON_FUZZ_REPORT`` when set.
"""

from __future__ import annotations

import base64
import copy
import gzip
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cordon.detections.errors import Rejected
from cordon.detections.intake import RawRecord, read_bytes
from cordon.detections.model import Detection
from cordon.detections.pipeline import DetectStats, detect
from cordon.providers import shipped_rule_dirs
from cordon.sigma import RuleSet
from tests.test_azure_detections import activity_rest, diagnostic, graph_sp_credentials
from tests.test_intake import ASFF_FINDING, GD_FINDING, ct_event

REPO = Path(__file__).resolve().parents[1]
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
EXAMPLES = int(os.environ.get("CORDON_FUZZ_EXAMPLES", "300"))
ORIGIN = "fuzz-input"
RULES = RuleSet.load(shipped_rule_dirs())


# -- seeds ----------------------------------------------------------------------------------------


def _bare(origin: str, data: bytes) -> list[tuple[str, dict]]:
    """(kind, record) of every record Cordon's intake reads from ``data`` (envelopes unwrapped)."""
    return [(r.kind, r.record) for r in read_bytes(origin, data) if isinstance(r, RawRecord)]


def _project_seeds() -> list[tuple[str, dict]]:
    seeds: list[tuple[str, dict]] = []
    for path in sorted((REPO / "examples").glob("*.json*")):
        seeds += _bare(path.name, path.read_bytes())
    for record in (ct_event(), GD_FINDING, ASFF_FINDING, activity_rest(), graph_sp_credentials(),
                   diagnostic(graph_sp_credentials())):
        seeds += _bare("fixture", json.dumps(record).encode())
    return seeds


def _corpus_seeds() -> list[tuple[str, dict]]:
    if not REAL.is_dir():
        return []
    seeds: list[tuple[str, dict]] = []
    files = (sorted((REAL / "stratus-red-team" / "docs" / "detonation-logs").glob("*.json"))
             + sorted((REAL / "aws-automated-security-response").rglob("*.json"))
             + sorted((REAL / "gcp-security-analytics" / "test" / "fixtures").glob("*.json"))
             + sorted((REAL / "gcp-security-response-automation").rglob("*.json")))
    for path in files:
        seeds += _bare(path.name, path.read_bytes())
    rules = REAL / "panther-analysis" / "rules"
    for path in sorted(rules.glob("aws_*/*.yml")) + sorted(rules.glob("azure_*/*.yml")) + sorted(
            rules.glob("gcp_audit_rules/*.yml")):
        for test in yaml.safe_load(path.read_text()).get("Tests") or []:
            log = test.get("Log")
            text = log if isinstance(log, str) else json.dumps(log, default=str)
            seeds += _bare(path.name, text.encode())
    return seeds


CORPUS_SEEDS = _corpus_seeds()
SEEDS = _project_seeds() + CORPUS_SEEDS


def test_the_public_corpus_is_part_of_the_fuzz():
    if not CORPUS_SEEDS:
        pytest.skip(f"../shared/data/real is absent ({REAL}): the fuzz runs on the project's fixtures only")
    kinds = {k for k, _ in CORPUS_SEEDS}
    assert {"cloudtrail", "securityhub", "gcp_audit", "gcp_scc", "entra_audit", "azure_activity"} <= kinds


# -- mutations ------------------------------------------------------------------------------------

#: Strings and brackets outside strings: walking these from the start keeps every quote paired.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.S)
_COLON = re.compile(r"\s*:")
_DEEP = re.compile(r'"@DEEP(\d+)@"')


def _key_sites(text: str) -> list[tuple[int, int, int]]:
    """(start, end, depth) of every object key in JSON ``text``; depth 1 = keys of a top-level object."""
    sites, depth = [], 0
    for m in _TOKEN.finditer(text):
        tok = m.group()
        if tok in ("[", "{"):
            depth += 1
        elif tok in ("]", "}"):
            depth -= 1
        elif _COLON.match(text, m.end()):
            sites.append((m.start(), m.end(), depth))
    return sites


def _duplicate_key(text: str, site: tuple[int, int, int]) -> str:
    """``text`` with the key at ``site`` repeated just before it (``"k": null, "k": ...``)."""
    start, end, _ = site
    return f"{text[:start]}{text[start:end]}: null, {text[start:]}"


def _drop_key(text: str, site: tuple[int, int, int]) -> str | None:
    """``text`` without the member at ``site`` (and one adjoining comma); ``None`` when its value
    cannot be delimited (too deep for ``json``)."""
    start, end, _ = site
    colon = _COLON.match(text, end).end()
    try:
        _, vend = json.JSONDecoder().raw_decode(text, len(text) - len(text[colon:].lstrip()))
    except (ValueError, RecursionError):
        return None
    after = re.compile(r"\s*,").match(text, vend)
    if after:
        return text[:start] + text[after.end():]
    before = re.search(r",\s*$", text[:start])
    return text[: before.start() if before else start] + text[vend:]


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = []
    if isinstance(value, dict):
        for k, v in value.items():
            out += [(*prefix, k), *_paths(v, (*prefix, k))]
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += [(*prefix, i), *_paths(v, (*prefix, i))]
    return out


#: Replacement values; "problem" ones are dead-lettered by the intake's own checks, whatever else the
#: record holds (they may hide a repeated key's reason).
ORDINARY = [["x", 1], [], 0, -1, 10**30, 1.5, math.inf, None, True, False, {}, {"a": "b"}, "", "x"]
PROBLEM = ["deep63", "deep64", "deep65", "deep1000", "deep5000", "huge65536", "huge70000", "surrogate",
           "surrogate-key"]


def _replacement(kind: str | Any) -> Any:
    if not isinstance(kind, str) or kind not in PROBLEM:
        return copy.deepcopy(kind)
    if kind.startswith("deep"):
        return f"@DEEP{kind[4:]}@"
    if kind.startswith("huge"):
        return "A" * int(kind[4:]) + "B"
    if kind == "surrogate":
        return "aws-cli \ud800 x"
    return {"k\udc00": 1}


def _serialise(record: dict, indent: int | None, ascii_only: bool) -> str:
    text = json.dumps(record, indent=indent, ensure_ascii=ascii_only, allow_nan=True)
    return _DEEP.sub(lambda m: "[" * (int(m.group(1)) - 1) + "1" + "]" * (int(m.group(1)) - 1), text)


LAYOUTS = ["jsonl", "array", "array_pretty", "records", "records_pretty", "concat_pretty", "eventbridge",
           "pubsub", "azure_records"]
_EVENTBRIDGE = {"cloudtrail": "AWS API Call via CloudTrail", "guardduty": "GuardDuty Finding",
                "securityhub": "Security Hub Findings - Imported"}


def _wrap_eventbridge(kind: str, text: str) -> str:
    detail_type = _EVENTBRIDGE.get(kind, "AWS API Call via CloudTrail")  # another kind: refused, still counted
    detail = f'{{"findings": [{text}]}}' if kind == "securityhub" else text
    return (f'{{"version": "0", "id": "eb-fuzz", "detail-type": {json.dumps(detail_type)}, "source": "aws.fuzz", '
            f'"account": "111122223333", "time": "2024-07-30T22:00:00Z", "region": "us-east-1", '
            f'"resources": [], "detail": {detail}}}')


def _wrap_pubsub(text: str) -> str:
    data = base64.b64encode(text.encode("utf-8", "surrogatepass")).decode()
    return json.dumps({"message": {"data": data, "messageId": "m-fuzz", "publishTime": "2024-07-30T22:00:00Z"},
                       "subscription": "projects/p/subscriptions/s"})


@st.composite
def fuzz_inputs(draw) -> dict[str, Any]:
    """One mutated input: its bytes, how many records it was written with, and what was done."""
    layout = draw(st.sampled_from(LAYOUTS))
    pretty = layout.endswith("_pretty")
    ascii_only = draw(st.booleans()) or layout == "pubsub"
    n = draw(st.integers(1, 4))
    texts, kinds, problem, broken, dup = [], [], False, False, False
    for _ in range(n):
        kind, seed = draw(st.sampled_from(SEEDS))
        record = copy.deepcopy(seed)
        for _ in range(draw(st.integers(0, 2))):
            paths = _paths(record)
            if not paths:
                break
            path = draw(st.sampled_from(paths))
            choice = draw(st.sampled_from(ORDINARY + PROBLEM))
            holder = record
            for step in path[:-1]:
                holder = holder[step]
            holder[path[-1]] = _replacement(choice)
            problem = problem or choice in PROBLEM
        text = _serialise(record, 1 if pretty else None, ascii_only)
        if not ascii_only and re.search("[\ud800-\udfff]", text):
            broken = True  # a raw surrogate is written as bytes that are not UTF-8
        sites = [s for s in _key_sites(text) if s[2] <= 8]  # keep the walk cheap near deep values
        edit = draw(st.sampled_from(["none", "none", "none", "duplicate", "drop"])) if sites else "none"
        if edit != "none":
            site = draw(st.sampled_from(sites))
            if edit == "duplicate":
                text = _duplicate_key(text, site)
                dup = True
            else:
                dropped = _drop_key(text, site)
                if dropped is not None:
                    text, broken = dropped, True
        texts.append(text)
        kinds.append(kind)
    if layout == "jsonl":
        body = "".join(t + "\n" for t in texts)
    elif layout in ("array", "array_pretty"):
        sep = ",\n" if pretty else ", "
        body = "[" + sep.join(texts) + "]"
    elif layout in ("records", "records_pretty", "azure_records"):
        key = "records" if layout == "azure_records" else "Records"
        sep = ",\n" if pretty else ", "
        body = f'{{\n"{key}": [\n' + sep.join(texts) + "\n]\n}" if pretty else f'{{"{key}": [' + sep.join(texts) + "]}"
    elif layout == "concat_pretty":
        body = "\n".join(texts)
    elif layout == "eventbridge":
        body = "".join(_wrap_eventbridge(k, t) + "\n" for k, t in zip(kinds, texts, strict=True))
    else:
        body = "".join(_wrap_pubsub(t) + "\n" for t in texts)
    whole = draw(st.sampled_from(["none"] * 6 + ["truncate", "insert", "duplicate", "drop"]))
    if whole == "duplicate":
        sites = [s for s in _key_sites(body) if s[2] <= 8]
        if sites:
            site = draw(st.sampled_from(sites))
            body = _duplicate_key(body, site)
            dup = True
    elif whole == "drop":
        sites = [s for s in _key_sites(body) if s[2] <= 8]
        dropped = _drop_key(body, draw(st.sampled_from(sites))) if sites else None
        if dropped is not None:
            body, broken = dropped, True
    data = body.encode("utf-8", "surrogatepass")
    if whole == "truncate":
        data, broken = data[: draw(st.integers(0, max(len(data) - 1, 0)))], True
    elif whole == "insert":
        at = draw(st.integers(0, len(data)))
        data, broken = data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:], True
    packing = draw(st.sampled_from(["plain"] * 4 + ["gzip", "gzip-cut"]))
    if packing != "plain":
        data = gzip.compress(data, mtime=0)
        if packing == "gzip-cut":
            data, broken = data[: draw(st.integers(2, max(len(data) - 1, 2)))], True
    return {"data": data, "records": n, "layout": layout, "problem": problem, "broken": broken, "dup": dup}


# -- the property -----------------------------------------------------------------------------------

TOTALS = {"inputs": 0, "records_read": 0, "detections": 0, "suppressed": 0, "rejected": 0, "seconds": 0.0,
          "count_checked": 0, "duplicate_checked": 0}


@pytest.fixture(scope="module", autouse=True)
def _report_totals():
    yield
    if TOTALS["inputs"]:
        line = json.dumps({**TOTALS, "seconds": round(TOTALS["seconds"], 1), "examples": EXAMPLES,
                           "seeds": len(SEEDS), "corpus_seeds": len(CORPUS_SEEDS)})
        print(f"\nintake fuzz (layouts) totals: {line}")
        if os.environ.get("CORDON_FUZZ_REPORT"):
            Path(os.environ["CORDON_FUZZ_REPORT"]).write_text(line + "\n")


def _storable(text: str | None) -> bool:
    try:
        (text or "").encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(fuzz_inputs())
def test_every_record_of_every_layout_is_accounted_for(case):
    started = time.perf_counter()
    stats = DetectStats()
    out = list(detect(read_bytes(ORIGIN, case["data"]), RULES, stats))
    TOTALS["seconds"] += time.perf_counter() - started
    s = stats
    assert s.records_read == s.rejected + s.events_unmatched + s.records_detected + s.records_empty, s
    assert s.events + s.findings + s.rejected == s.records_read, s
    rejected = [o for o in out if isinstance(o, Rejected)]
    detections = [o for o in out if isinstance(o, Detection)]
    assert len(rejected) == s.rejected and len(detections) == s.detections == len(out) - len(rejected), s
    positions = []
    for o in out:
        if isinstance(o, Rejected):
            assert o.origin == ORIGIN and isinstance(o.position, int) and o.position >= 0 and o.reason, o
            assert all(_storable(t) for t in (o.field, o.reason, o.raw_text)), o.message()
            positions.append(o.position)
        else:
            assert o.raw_ref.origin == ORIGIN and o.raw_ref.position >= 0
            o.model_dump_json()
            positions.append(o.raw_ref.position)
    assert positions == sorted(positions), positions
    if not case["broken"] and not case["dup"]:
        assert s.records_read == case["records"], (case["layout"], s, [r.message()[:300] for r in rejected])
        TOTALS["count_checked"] += 1
    if case["dup"] and not (case["broken"] or case["problem"]):
        assert any("duplicate" in r.reason for r in rejected), (case["layout"], [r.message()[:300] for r in rejected])
        TOTALS["duplicate_checked"] += 1
    TOTALS["inputs"] += 1
    TOTALS["records_read"] += s.records_read
    TOTALS["detections"] += s.detections
    TOTALS["suppressed"] += s.suppressed
    TOTALS["rejected"] += s.rejected
