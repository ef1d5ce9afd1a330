"""A storm: many credentials added at once by a few actors, answered end to end.

``--cases`` distinct CloudTrail ``CreateAccessKey`` detections from ``--actors`` actors (case i by
actor i mod actors) are POSTed to ``/webhook/detections`` of ``cordon serve`` in batches of
``--batch`` (JSON lines). ``--order interleaved`` (the default, the worst case for incidents: each
batch holds one record of each of 25 actors, so no batch holds two cases of one incident) or
``--order actor`` (each actor's burst together, as one CloudTrail delivery file holds it: the cases
of one actor in one batch are answered by one run and one request, issue 14). The run of every case,
or incident, asks in Slack (the outbox rolls an actor's burst into summary messages); once every
case is asked (its own ``approval.asked``, or its incident lead's), every case's Approve button is
clicked (signed, 8 at a time; an incident's message once) and the bench waits for every case to end. Same processes as
``bench_latency.py`` (Prefect server, ``--workers`` ``cordon worker``, ``cordon serve``; the
stand-ins in this process).

Prints, and with ``--json`` as one object on the last line: ``cases``, ``lost`` (cases that did
not end ``contained``), ``cases_per_min_asked`` (cases / time from the first POST to the last
``approval.asked``), ``cases_per_min_verified`` (cases / time from the first click to the last
``verify.*``), ``slack_calls_per_case`` (Web API calls the Slack stand-in received / cases),
``slack_critical_calls_per_case`` (of those, the requests posted and the messages updated: thread
replies and response-URL answers are behind the critical path), ``slack_calls_by_kind`` and
``peak_rss_mb`` (the largest peak RSS, ``VmHWM``, of one Cordon process) and ``cpu_s_per_case`` (user +
system CPU of the Prefect server, the workers and ``cordon serve`` from the first POST to the last
``case.closed``, per case: under load, so idle polling weighs little). Not a test.

    .venv/bin/python benchmarks/bench_storm.py [--cases 500] [--actors 50] [--workers 1] [--postgres] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types
import urllib.parse
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_latency import CHANNEL, TOKEN, Stack, make_event, signed, tree_cpu  # noqa: E402


def peak_rss_mb(pid: int) -> float:
    """``VmHWM`` of ``pid`` and its live descendants, the largest, in MiB (0 when gone)."""
    best = 0.0
    todo = [pid]
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                raw = Path(f"/proc/{d}/stat").read_text()
                children.setdefault(int(raw[raw.rindex(")") + 2:].split()[1]), []).append(int(d))
            except OSError:
                continue
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    best = max(best, int(line.split()[1]) / 1024)
        except OSError:
            pass
        todo.extend(children.get(p, []))
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=500)
    ap.add_argument("--actors", type=int, default=50)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--order", choices=("interleaved", "actor"), default="interleaved")
    ap.add_argument("--runner", choices=("warm", "process"), default="warm")
    ap.add_argument("--postgres", action="store_true")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import httpx

    from cordon.audit.ledger import Ledger
    from cordon.providers.aws.cloudtrail import detection_from_cloudtrail
    from cordon.sandbox.slack_standin import block_actions_payload

    stack = Stack("cordon-storm-", postgres=args.postgres, runner=args.runner, workers=args.workers)
    aws, slack, server = stack.aws, stack.slack, stack.server
    try:
        template = json.loads((REPO / "examples" / "cloudtrail-create-access-key.json").read_text())
        match = types.SimpleNamespace(id="bench", title="bench", path="bench", level="high",
                                      technique_ids=["T1098.001"])
        events = []
        for i in range(args.cases):
            ev = make_event(template, i % args.actors, f"AKIASTORM{i:011d}")
            ev["requestParameters"]["userName"] = ev["responseElements"]["accessKey"]["userName"] = f"storm-user-{i}"
            aws.seed_from_detection(detection_from_cloudtrail(ev, match, "bench", i))
            events.append((i % args.actors, i, ev))
        if args.order == "actor":
            events.sort(key=lambda e: (e[0], e[1]))
        events = [e for _, _, e in events]
        print(f"{args.cases} credentials seeded", flush=True)

        http = httpx.Client(timeout=120)
        ledger = Ledger(stack.db_url)
        peak = 0.0
        base = stack.start(http).base
        pids = stack.cordon_pids()
        deadline = time.monotonic() + args.timeout

        def count(kind: str) -> set[str]:
            found = {r.case_id for r in ledger.records(kind_prefix=kind) if r.case_id}
            if kind == "approval.asked":  # an incident's members are asked by their lead's request
                found |= {r.case_id for r in ledger.records(kind_prefix="run.delegated")
                          if r.payload.get("lead_case_id") in found}
            return found

        cpu_pids = [server.proc.pid, *pids]
        cpu0 = sum(tree_cpu(p) for p in cpu_pids)
        t0 = time.monotonic()
        for k in range(0, len(events), args.batch):
            body = "\n".join(json.dumps(e) for e in events[k:k + args.batch]).encode()
            r = http.post(f"{base}/webhook/detections", content=body, headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 202, r.text
        posted = time.monotonic() - t0
        print(f"posted in {posted:.1f} s", flush=True)
        while len(count("approval.asked")) < args.cases and time.monotonic() < deadline:
            peak = max(peak, *(peak_rss_mb(p) for p in pids))
            time.sleep(0.5)
        t_asked = time.monotonic() - t0
        asked = count("approval.asked")
        print(f"{len(asked)} asked in {t_asked:.1f} s", flush=True)

        def click(case_id: str) -> None:
            for m in slack.messages(CHANNEL):
                block = next((b for b in m.get("blocks", []) if b.get("type") == "actions"
                              and b.get("block_id", "").endswith(case_id)), None)
                if block is None and case_id in json.dumps(m.get("blocks", [])):
                    block = next((b for b in m["blocks"] if b.get("type") == "actions"), None)
                if block is not None:
                    one = {**m, "blocks": [block]}
                    payload = block_actions_payload(one, CHANNEL, "cordon_approve", user_id="U0ALICE01",
                                                    user_name="alice",
                                                    response_url=slack.response_url(CHANNEL, m["ts"]))
                    data = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
                    r = http.post(f"{base}/slack/interactions", content=data, headers=signed(data))
                    assert r.status_code == 200, r.text
                    return
            raise KeyError(f"no message holds the buttons of {case_id}")

        leads = {r.case_id: r.payload["lead_case_id"] for r in ledger.records(kind_prefix="run.delegated")}
        t1 = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(click, sorted({leads.get(c, c) for c in asked})))
        while len(count("verify.")) < len(asked) and time.monotonic() < deadline:
            peak = max(peak, *(peak_rss_mb(p) for p in pids))
            time.sleep(0.5)
        t_verified = time.monotonic() - t1
        while time.monotonic() < deadline and len(count("case.closed")) < args.cases:
            time.sleep(0.5)
        cpu = sum(tree_cpu(p) for p in cpu_pids) - cpu0
        contained = sum(1 for c in ledger.cases() if c["status"] == "contained")
        requests = slack.requests
        calls = len(requests)
        # the critical path: posting requests and updating messages; thread replies (the case's
        # story) and response-URL answers to the clicker are behind it
        by_kind = Counter("thread reply" if r.method == "chat.postMessage" and r.body.get("thread_ts") else r.method
                          for r in requests)
    finally:
        stack.stop()
    out = {"cases": args.cases, "actors": args.actors, "order": args.order, "workers": args.workers,
           "runner": args.runner, "incident_runs": len(set(leads.values())),
           "postgres": args.postgres, "lost": args.cases - contained,
           "cases_per_min_asked": round(args.cases / t_asked * 60, 1),
           "cases_per_min_verified": round(len(asked) / t_verified * 60, 1),
           "slack_calls_per_case": round(calls / args.cases, 2),
           "slack_critical_calls_per_case": round(
               (by_kind["chat.postMessage"] + by_kind["chat.update"]) / args.cases, 2),
           "slack_calls_by_kind": dict(by_kind), "peak_rss_mb": round(peak, 1),
           "cpu_s_per_case": round(cpu / args.cases, 3)}
    print(f"{args.cases} cases from {args.actors} actors, {args.workers} worker(s): asked {out['cases_per_min_asked']}"
          f"/min, verified {out['cases_per_min_verified']}/min, lost {out['lost']}, Slack calls a case "
          f"{out['slack_calls_per_case']} ({out['slack_critical_calls_per_case']} posts and updates: "
          f"{dict(by_kind)}), peak RSS {out['peak_rss_mb']} MiB, CPU {out['cpu_s_per_case']} s a case "
          "(Prefect server, workers, cordon serve)")
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
