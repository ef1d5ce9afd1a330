"""Secrets planted in the events never leave Cordon's intake.

Seven secrets are planted, each a fresh random string: a CloudTrail
``responseElements.accessKey.secretAccessKey`` (CreateAccessKey), a federation ``sessionToken``
(GetFederationToken), a CreateLoginProfile ``requestParameters.password``, a GCP
``privateKeyData`` (CreateServiceAccountKey response), a Graph ``secretText`` (an Entra audit
record's additional details and modified properties), a Slack ``xoxb-`` token and ``password=``
text in a userAgent. The events go through

* the CLI path: ``cordon respond ... --sandbox --approve auto --output json`` on Prefect's
  temporary server with its own ``PREFECT_HOME``, and
* the durable path: the detection webhook of Cordon's server, a Prefect server and a worker (child
  processes), Slack approval on the Slack stand-in, one click to approve;

then every place the data went is searched for every secret: Prefect's database (its SQLite file
and write-ahead log under ``PREFECT_HOME``: flow-run parameters, task runs, states, logs,
artifacts, events), Prefect's result storage (each result decoded from its base64 pickle), the
Slack stand-in's received requests, stdout/stderr or the webhook's answers, and the ledger's files.
Each search is checked to see the data at all (positive controls: the case IDs and the access key
ID are found where they must be), so a search that looks in the wrong place fails.
"""

from __future__ import annotations

import base64
import contextvars
import copy
import hashlib
import hmac
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import httpx
import pytest
import uvicorn
import yaml

from cordon.audit.ledger import Ledger
from cordon.sandbox.aws import AwsSandbox
from cordon.sandbox.prefect_server import PrefectServer, Worker, free_port
from cordon.sandbox.slack_standin import SlackStandIn, block_actions_payload
from tests.helpers import link_shipped_rules, one_credential, wait_for

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
BIN = Path(sys.executable).parent
ACCESS_KEY = "AKIAEXAMPLEBUILDBOT9"
SIGNING = "3c59dc048e8850243be8079a5c74d079"
WEBHOOK_TOKEN = "wh-planted-81f2"
CHANNEL = "C0APPROVALS"


def planted(directory: Path) -> tuple[dict[str, str], list[Path]]:
    """Write the events with the seven planted secrets; returns ``({what: secret}, files)``."""
    def tok(prefix: str) -> str:
        return prefix + secrets.token_hex(12)

    s = {"secretAccessKey": tok("wJalrXUt"), "sessionToken": tok("IQoJb3Jp"), "password": tok("Pw9!"),
         "privateKeyData": tok("ewogICJ0"), "secretText": tok("Gx8Q~"),
         "slack_token": f"xoxb-{secrets.randbelow(10**12)}-{tok('')}", "useragent_password": tok("hunter2")}
    base = json.loads((EXAMPLES / "cloudtrail-create-access-key.json").read_text())
    key = copy.deepcopy(base)
    key["responseElements"]["accessKey"]["secretAccessKey"] = s["secretAccessKey"]
    key["userAgent"] = f"aws-cli/2.17.3 bot {s['slack_token']} password={s['useragent_password']}"
    fed = copy.deepcopy(base)
    fed.update(eventName="GetFederationToken", eventSource="sts.amazonaws.com", eventID="planted-fed-1",
               requestParameters={"name": "evil-fed"},
               responseElements={"credentials": {"accessKeyId": "ASIAPLANTEDFED00001",
                                                 "expiration": "Nov 20, 2026, 3:14:07 PM",
                                                 "sessionToken": s["sessionToken"]},
                                 "federatedUser": {"arn": "arn:aws:sts::111122223333:federated-user/evil-fed",
                                                   "federatedUserId": "111122223333:evil-fed"}})
    login = copy.deepcopy(base)
    login.update(eventName="CreateLoginProfile", eventID="planted-lp-1",
                 requestParameters={"userName": "ops-admin", "password": s["password"], "passwordResetRequired": False},
                 responseElements={"loginProfile": {"userName": "ops-admin", "createDate": "Nov 20, 2026 3:14:07 AM",
                                                    "passwordResetRequired": False}})
    gcp = json.loads((EXAMPLES / "gcp-create-sa-key.json").read_text())
    gcp["protoPayload"]["response"]["privateKeyData"] = s["privateKeyData"]
    entra = json.loads((EXAMPLES / "entra-add-sp-credentials.json").read_text())
    entra["additionalDetails"].append({"key": "secretText", "value": s["secretText"]})
    entra["targetResources"][0]["modifiedProperties"].append(
        {"displayName": "PasswordCredentials", "oldValue": None,
         "newValue": json.dumps([{"keyId": "e4a7c9b1-3d5f-4e6a-8b0c-2d4f6a8c0e1b", "secretText": s["secretText"]}])})
    directory.mkdir(parents=True, exist_ok=True)
    files = [directory / "aws.jsonl", directory / "gcp.json", directory / "entra.json"]
    files[0].write_text("".join(json.dumps(e) + "\n" for e in (key, fed, login)))
    files[1].write_text(json.dumps(gcp))
    files[2].write_text(json.dumps(entra))
    return s, files


def needles(secret: str) -> list[bytes]:
    """What to search for: the secret, and for a Slack token the part after the kept prefix."""
    out = [secret.encode()]
    if secret.startswith("xox"):
        out.append(secret.split("-", 1)[1].encode())
    return out


def _decoded(path: Path) -> bytes:
    """A file's bytes, plus, for a Prefect result file, its decoded (base64) pickle."""
    data = path.read_bytes()
    extra = b""
    try:
        doc = json.loads(data)
        if isinstance(doc, dict) and isinstance(doc.get("result"), str):
            extra = base64.b64decode(doc["result"])
    except (ValueError, UnicodeDecodeError):
        try:
            extra = base64.b64decode(data, validate=False)
        except ValueError:
            pass
    return data + b"\n" + extra


def search(places: dict[str, bytes], planted_secrets: dict[str, str]) -> list[tuple[str, str]]:
    """``(secret name, place)`` for every planted secret found anywhere."""
    return [(name, where) for name, secret in planted_secrets.items() for where, data in places.items()
            if any(n in data for n in needles(secret))]


def files_under(*roots: Path) -> dict[str, bytes]:
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                out[str(p)] = _decoded(p)
    return out


def test_the_search_finds_every_planted_secret_where_it_is():
    """The control: each secret is in the events as written (the search's needles are right)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        s, files = planted(Path(d))
        found = search({str(f): f.read_bytes() for f in files}, s)
    assert {name for name, _ in found} == set(s) and len(s) == 7


def test_planted_secrets_stay_out_of_prefect_stdout_and_the_ledger_on_the_cli_path(tmp_path):
    s, files = planted(tmp_path / "events")
    home, db = tmp_path / "prefect", tmp_path / "ledger" / "ledger.db"
    db.parent.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(CORDON_DATABASE_URL=f"sqlite:///{db}", PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    proc = subprocess.run([str(BIN / "cordon"), "respond", *map(str, files), "--sandbox", "--approve", "auto",
                           "--output", "json"], env=env, cwd=REPO, capture_output=True, timeout=900)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    summaries = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    # the shipped configuration: 5 cases of the planted records' credentials and, actor_access being on
    # by default, 2 of the access their actors signed with (derived from the same records: no leak there either)
    assert summaries[-1]["summary"]["cases"] == 7, summaries[-1]
    summaries = [doc for doc in summaries if "case_id" in doc]
    assert len([x for x in summaries if not x["detection"]["uid"].endswith("#actor")]) == 5
    assert len(summaries) == 7 and {x["status"] for x in summaries} <= {"contained", "no_containment", "refused"}
    prefect_files = files_under(home)
    storage = {k: v for k, v in prefect_files.items() if "/storage/" in k}
    database = {k: v for k, v in prefect_files.items() if Path(k).name.startswith("prefect.db")}
    ledger_files = files_under(db.parent)
    # positive controls: the searches see the data
    assert storage and database and ledger_files
    assert all(any(x["case_id"].encode() in d for d in database.values()) for x in summaries)  # flow-run parameters
    assert any(ACCESS_KEY.encode() in d for d in storage.values())  # the decoded results
    assert any(ACCESS_KEY.encode() in d for d in ledger_files.values())
    places = {**prefect_files, **ledger_files, "stdout": proc.stdout, "stderr": proc.stderr}
    assert search(places, s) == []


# -- the durable path ---------------------------------------------------------------------------
def slack_signed(body: bytes) -> dict[str, str]:
    ts = int(time.time())
    sig = hmac.new(SIGNING.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": f"v0={sig}",
            "Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def config_with_approvers(tmp_path, monkeypatch) -> Path:
    """The shipped configuration with an approver (alice) named, in ``tmp_path`` (``CORDON_CONFIG``)."""
    cfg = tmp_path / "config"
    cfg.mkdir()
    # the planted secrets' cases alone (tests.helpers.one_credential): the actor's key is not what is planted
    data = one_credential(yaml.safe_load((REPO / "cordon" / "defaults" / "cordon.yaml").read_text()))
    data.setdefault("approval", {}).setdefault("approvers", {})["users"] = ["U0ALICE01"]
    data["approval"]["identities"] = {"U0ALICE01": ["alice@corp.example"]}
    data["playbooks"] = "../playbooks"
    (cfg / "cordon.yaml").write_text(yaml.safe_dump(data))
    link_shipped_rules(cfg / "rules")
    (tmp_path / "playbooks").symlink_to(REPO / "cordon" / "defaults" / "playbooks")
    monkeypatch.setenv("CORDON_CONFIG", str(cfg))
    return cfg


def _state(run_id: str) -> str | None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        fr = client.read_flow_run(run_id)
    return fr.state.type.value if fr.state else None


def _served() -> bool:
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            client.read_deployment_by_name("respond/respond")
        return True
    except Exception:  # noqa: BLE001 - not yet
        return False


def test_planted_secrets_stay_out_of_prefect_slack_and_the_ledger_on_the_durable_path(tmp_path, monkeypatch,
                                                                                       config_with_approvers):
    from cordon.config import load_config
    from cordon.detections.errors import Rejected
    from cordon.detections.intake import read_inputs
    from cordon.detections.pipeline import detect
    from cordon.server.wiring import build_app
    from cordon.sigma import RuleSet

    s, files = planted(tmp_path / "events")
    server = PrefectServer(tmp_path / "prefect").start()
    slack = SlackStandIn()
    slack_url = slack.start()
    slack.add_user({"id": "U0ALICE01", "name": "alice", "profile": {"email": "alice@corp.example"}})
    aws = AwsSandbox().start()
    aws.reset()
    db = tmp_path / "ledger" / "ledger.db"
    db.parent.mkdir()
    env = {**server.env, "CORDON_DATABASE_URL": f"sqlite:///{db}", "CORDON_SLACK_BOT_TOKEN": "xoxb-test",
           "CORDON_SLACK_API_URL": slack_url, "CORDON_SLACK_CHANNEL": CHANNEL,
           "CORDON_CONFIG": str(config_with_approvers)}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    worker = Worker(env, tmp_path / "worker.log", cwd=REPO)
    uv = thread = None
    from prefect.settings import PREFECT_API_URL, PREFECT_RESULTS_PERSIST_BY_DEFAULT, temporary_settings

    try:
        with temporary_settings({PREFECT_API_URL: server.api_url, PREFECT_RESULTS_PERSIST_BY_DEFAULT: True}):
            for det in detect(read_inputs([files[0]]), RuleSet.load(load_config().rules_dir)):
                if not isinstance(det, Rejected) and not det.suppressed:
                    aws.seed_from_detection(det)  # what the AWS detections say exists
            worker.start()
            wait_for(_served, 120, "the respond deployment to be served")
            ledger = Ledger(f"sqlite:///{db}")
            app = build_app(signing_secret=SIGNING, ledger=ledger, webhook_token=WEBHOOK_TOKEN,
                            cloud=aws.cloud_params())
            port = free_port()
            uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
            thread = threading.Thread(target=contextvars.copy_context().run, args=(uv.run,), daemon=True)
            thread.start()
            wait_for(lambda: uv.started, 30, "Cordon's server")
            answers = []
            for f in files:
                r = httpx.post(f"http://127.0.0.1:{port}/webhook/detections", content=f.read_bytes(),
                               headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}"}, timeout=120)
                assert r.status_code == 202, r.text
                answers.append(r.content)
            cases = [c for a in answers for c in json.loads(a)["cases"]]
            assert len(cases) == 5 and all(c["flow_run_id"] for c in cases)
            runs = [c["flow_run_id"] for c in cases]
            wait_for(lambda: all(_state(r) in ("PAUSED", "COMPLETED", "FAILED", "CRASHED") for r in runs), 300,
                     "every run to ask for approval (or end)")
            # approve the access-key case in Slack (the message carries its buttons)
            key_case = next(c["case_id"] for c in cases if c["playbook"] == "aws-access-key-created")
            # a run suspends at once; its request may wait in the outbox for the channel's slot, and
            # may be a row of the actor's summary message: click that case's own buttons
            # (or its incident's request: the cases of one actor in one body are asked together, by their lead)
            delegated = list(ledger.records(case_id=key_case, kind_prefix="run.delegated"))
            asker = delegated[-1].payload["lead_case_id"] if delegated else key_case
            wait_for(lambda: list(ledger.records(case_id=asker, kind_prefix="approval.asked")), 120,
                     "the access-key request to be in Slack")
            message = next(m for m in slack.messages(CHANNEL) if key_case in json.dumps(m["blocks"]))
            own = next(b for b in message["blocks"] if b.get("type") == "actions" and asker in json.dumps(b))
            message = {**message, "blocks": [own]}
            payload = block_actions_payload(message, CHANNEL, "cordon_approve", user_id="U0ALICE01", user_name="alice",
                                            response_url=slack.response_url(CHANNEL, message["ts"]))
            body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
            assert httpx.post(f"http://127.0.0.1:{port}/slack/interactions", content=body,
                              headers=slack_signed(body)).status_code == 200
            key_run = next(c["flow_run_id"] for c in cases if c["case_id"] == key_case)
            wait_for(lambda: _state(key_run) == "COMPLETED", 240, "the approved run to complete")
            assert ledger.case(key_case)["status"] == "contained"
            slack_seen = json.dumps([{"method": r.method, "body": r.body} for r in slack.requests],
                                    default=str).encode()
    finally:
        if uv is not None:
            uv.should_exit = True
            thread.join(10)
        worker.stop()
        server.stop()
        aws.stop()
        slack.stop()
    prefect_files = files_under(server.home)
    storage = {k: v for k, v in prefect_files.items() if "/storage/" in k}
    database = {k: v for k, v in prefect_files.items() if Path(k).name.startswith("prefect.db")}
    ledger_files = files_under(db.parent)
    assert storage and database and ledger_files
    assert all(any(c["case_id"].encode() in d for d in database.values()) for c in cases)
    assert any(ACCESS_KEY.encode() in d for d in storage.values())
    assert key_case.encode() in slack_seen and ACCESS_KEY.encode() in slack_seen
    places = {**prefect_files, **ledger_files, "slack": slack_seen,
              **{f"webhook answer {i}": a for i, a in enumerate(answers)}}
    found = search(places, s)
    assert found == [], found
    shutil.rmtree(server.home, ignore_errors=True)


def test_thread_replies_escape_attacker_text():
    """What the run replies in the approval thread cannot mention @channel or make a link: the
    target and the cloud's error message are attacker-influenced (cordon/slack/progress.py step_line)."""
    from cordon.slack.progress import step_line
    from cordon.slack.progress import who as _who

    evil = {"name": "azure.remove-sp-password", "target": "<!channel> payments&api", "status": "failed",
            "error": "Forbidden: see <https://evil.example|the fix>"}
    line = step_line(evil)
    assert line == ("azure.remove-sp-password on &lt;!channel&gt; payments&amp;api: failed "
                    "(Forbidden: see &lt;https://evil.example|the fix&gt;)")
    brief = step_line(evil, brief=True)
    assert brief == "azure.remove-sp-password: Forbidden: see &lt;https://evil.example|the fix&gt;"
    assert _who({"approvers": ["slack:U0ALICE01", "console:<!here>"]}) == "<@U0ALICE01>, console:&lt;!here&gt;"
