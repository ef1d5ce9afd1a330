"""``cordon sensor rehearse NAME PATH`` (issue 15), as a user runs it: a subprocess, the sandbox's
stand-ins, the record sent through the sensor's real transport (S3 upload and moto's bucket
notification to SQS; an SQS message; a Pub/Sub publish; the Graph audit log; the SecOps stand-in's
legacySearchDetections), one pass, the case
answered in process: the same JSON lines as ``cordon respond --output json``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


# (sensor, example, the added credential's containment, cases): with actor_access on (the default)
# the CloudTrail and Entra examples' actors (mallory's access key, her user sessions) get a case too
@pytest.mark.parametrize(("sensor", "example", "action", "n_cases"), [
    ("aws-s3-sqs", "cloudtrail-create-access-key.json", "aws.deactivate-access-key", 2),
    ("aws-eventbridge-sqs", "guardduty-same-key.json", "aws.deactivate-access-key", 1),
    ("gcp-pubsub", "gcp-create-sa-key.json", "gcp.disable-sa-key", 1),
    ("entra-audit", "entra-add-sp-credentials.json", None, 2),
    ("aws-config", "config-access-keys-rotated.json", "aws.deactivate-stale-keys", 1),
    ("chronicle", "chronicle-gcp-sa-key.json", "gcp.disable-sa-key", 1),
])
def test_rehearse_sends_the_example_through_the_source_and_contains_it(tmp_path, sensor, example, action, n_cases):
    env = {**os.environ, "CORDON_DATABASE_URL": f"sqlite:///{tmp_path}/ledger.db", "HOME": str(tmp_path)}
    env.pop("PREFECT_API_URL", None)
    res = subprocess.run([sys.executable, "-m", "cordon.cli", "sensor", "rehearse", sensor,
                          str(REPO / "examples" / example), "--output", "json"],
                         env=env, cwd=tmp_path, capture_output=True, timeout=300)
    assert res.returncode == 0, res.stderr.decode()[-3000:]
    lines = [json.loads(line) for line in res.stdout.decode().splitlines() if line.startswith("{")]
    cases = [line for line in lines if "case_id" in line]
    assert len(cases) == n_cases, lines
    assert all(c["status"] == "contained" and c["verified"] is True for c in cases)
    assert all(a["status"] == "contained" for c in cases for a in c["actions"])
    # the example's own credential (not the actor's access, which names what revealed it)
    (case,) = [c for c in cases if "revealed_by" not in ((c["detection"].get("credential") or {}).get("attributes")
                                                          or {})]
    if action:
        assert [a["name"] for a in case["actions"]] == [action]
