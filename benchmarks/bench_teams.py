"""Click-to-containment in Microsoft Teams, through the Teams stand-in.

The production path on one machine, as ``cordon respond --sandbox --approve teams`` runs it
(:mod:`cordon.sandbox.teams_rehearsal`): a temporary Prefect server (child process), one
``respond`` worker (child process, warm runner), Cordon's ``/teams/messages`` endpoint (uvicorn,
in this process) with the Teams SDK's token validator, the Teams stand-in (connector, OpenID
metadata, signing key) and the AWS sandbox (moto). Over N cases (default 10), each a distinct
CloudTrail ``CreateAccessKey`` by a distinct actor, submitted with ``approval="teams"``:

* **invoke answered**: from POSTing the signed ``adaptiveCard/action`` invoke to Cordon's answer
  (token validation against the stand-in's key set, the activity checks, the replay check, the
  policy, the ledger's settling claim, the deny window, Prefect's resume);
* **click -> containment start**: from POSTing the invoke to the ledger's ``containment.started``
  record (the resumed run picked up by the worker, the decision recorded, the gate passed: it
  waits out ``approval.deny_window``, 0.5 s by default, so a Deny clicked at the same moment wins);
* **click -> case closed**: to ``case.closed`` (contained and verified).

Not a test: prints figures (p50 / p95 / max, seconds) and with ``--json`` one JSON object last.

    .venv/bin/python benchmarks/bench_teams.py [--cases 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    k = max(0, min(len(values) - 1, round(p / 100 * (len(values) - 1))))
    return values[k]


def make_event(template: dict, i: int) -> dict:
    event = json.loads(json.dumps(template))
    actor, key = f"intruder-{i}", f"AKIATEAMSBENCH{i:06d}"
    event["userIdentity"].update({"arn": f"arn:aws:iam::111122223333:user/{actor}", "userName": actor,
                                  "principalId": f"AIDATEAMS{i:011d}", "accessKeyId": f"AKIAACTOR{i:011d}"})
    event["requestParameters"]["userName"] = f"build-bot-{i}"
    event["responseElements"]["accessKey"].update({"accessKeyId": key, "userName": f"build-bot-{i}"})
    event["eventID"] = f"teams-bench-{i}-{time.time_ns()}"
    return event


def at(record) -> float:
    return datetime.fromisoformat(record.ts).timestamp()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=10)
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="cordon-bench-teams-"))
    os.environ.update({"PREFECT_HOME": str(tmp / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                       "CORDON_DATABASE_URL": f"sqlite:///{tmp}/ledger.db"})
    os.environ.pop("PREFECT_API_URL", None)
    from cordon.prefect_temp import TemporaryServer

    server = TemporaryServer().spawn()
    os.environ["PREFECT_API_URL"] = server.api_url  # before prefect is imported
    server.wait_ready(120)

    import yaml

    from cordon.config import DEFAULTS, load_config
    from cordon.engine import Responder
    from cordon.sandbox.aws import AwsSandbox
    from cordon.sandbox.teams_rehearsal import TeamsRehearsal

    # the shipped configuration, one case per event (no case for the actor's own key)
    base = tmp / "base"
    base.mkdir()
    data = yaml.safe_load((DEFAULTS / "cordon.yaml").read_text())
    data["actor_access"] = False
    for key in ("rules", "playbooks"):
        if data.get(key):
            data[key] = str((DEFAULTS / data[key]).resolve())
    (base / "cordon.yaml").write_text(yaml.safe_dump(data))
    rehearsal = TeamsRehearsal()
    rehearsal.configure(base)
    aws = AwsSandbox().start()
    template = json.loads((REPO / "examples" / "cloudtrail-create-access-key.json").read_text())
    template = template["Records"][0] if "Records" in template else template
    answered, started, closed = [], [], []
    try:
        responder = Responder()
        rehearsal.start(responder.ledger, load_config())
        for i in range(args.cases):
            report = responder.intake_bytes(json.dumps(make_event(template, i)).encode(), f"bench-{i}")
            (submitted,) = list(responder.run_all(report, approval="teams", stand_ins=aws))
            case_id, run_id = submitted["case_id"], submitted["flow_run_id"]
            said, sent = rehearsal.click(responder.ledger, case_id, run_id)
            answered.append(time.time() - sent)
            if "recorded" not in said:
                raise SystemExit(f"case {i}: the click was refused: {said}")
            rehearsal.wait_closed(responder.ledger, case_id, run_id)
            recs = {r.kind: r for r in responder.ledger.records(case_id=case_id) if r.run_id == run_id}
            started.append(at(recs["containment.started"]) - sent)
            closed.append(at(recs["case.closed"]) - sent)
            print(f"case {i + 1}/{args.cases}: answered {answered[-1]:.3f} s, containment started "
                  f"{started[-1]:.3f} s, closed {closed[-1]:.3f} s after the click", flush=True)
    finally:
        rehearsal.stop()
        aws.stop()
        server.stop()

    figures = {}
    for name, values in (("invoke_answered_s", answered), ("click_to_containment_start_s", started),
                         ("click_to_case_closed_s", closed)):
        figures[name] = {"p50": round(statistics.median(values), 3), "p95": round(pct(values, 95), 3),
                         "max": round(max(values), 3)}
        print(f"{name}: p50 {figures[name]['p50']:.3f}  p95 {figures[name]['p95']:.3f}  "
              f"max {figures[name]['max']:.3f}  (n={len(values)})")
    if args.json:
        print(json.dumps({"cases": args.cases, **figures}))


if __name__ == "__main__":
    main()
