"""``cordon sensor rehearse NAME PATH`` (issue 15), as a user runs it: a subprocess, the sandbox's
stand-ins, the record sent through the sensor's real transport (S3 upload and moto's bucket
notification to SQS; an SQS message; a Pub/Sub publish; the Graph audit log), one pass, the case
answered in process: the same JSON lines as ``cordon respond --output json``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("sensor", "example", "action"), [
    ("aws-s3-sqs", "cloudtrail-create-access-key.json", "aws.deactivate-access-key"),
    ("aws-eventbridge-sqs", "guardduty-same-key.json", "aws.deactivate-access-key"),
    ("gcp-pubsub", "gcp-create-sa-key.json", "gcp.disable-sa-key"),
    ("entra-audit", "entra-add-sp-credentials.json", None),
])
def test_rehearse_sends_the_example_through_the_source_and_contains_it(tmp_path, sensor, example, action):
    env = {**os.environ, "CORDON_DATABASE_URL": f"sqlite:///{tmp_path}/ledger.db", "HOME": str(tmp_path)}
    env.pop("PREFECT_API_URL", None)
    res = subprocess.run([sys.executable, "-m", "cordon.cli", "sensor", "rehearse", sensor,
                          str(REPO / "examples" / example), "--output", "json"],
                         env=env, cwd=tmp_path, capture_output=True, timeout=300)
    assert res.returncode == 0, res.stderr.decode()[-3000:]
    lines = [json.loads(line) for line in res.stdout.decode().splitlines() if line.startswith("{")]
    cases = [line for line in lines if "case_id" in line]
    assert len(cases) == 1, lines
    (case,) = cases
    assert case["status"] == "contained" and case["verified"] is True
    if action:
        assert [a["name"] for a in case["actions"]] == [action]
    assert all(a["status"] == "contained" for a in case["actions"])
