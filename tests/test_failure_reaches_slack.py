"""Issue 11: a Slack run that fails before it asks (here ``/cordon run`` on a worker with no AWS
credentials: ``NoCredentialsError`` in enrichment) is said in the approvers' channel, mentioning the
requester, and recorded; nothing is contained. Real Prefect (the respond flow in process against the
test server), real boto3 without credentials, the Slack stand-in over real HTTP, a real ledger."""

from __future__ import annotations

import pytest

from cordon.audit.ledger import Ledger
from cordon.engine import Responder
from cordon.manual import open_manual_case
from cordon.sandbox.slack_standin import SlackStandIn

KEY = "AKIANOCREDENTIALS001"


@pytest.fixture
def no_aws_credentials(tmp_path, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_ENDPOINT_URL", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "absent-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "absent-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def test_a_slack_run_failing_before_it_asks_is_said_in_the_channel(tmp_path, monkeypatch, prefect_server,
                                                                    no_aws_credentials):
    from cordon.flows.respond import respond

    url = f"sqlite:///{tmp_path}/ledger.db"
    monkeypatch.setenv("CORDON_DATABASE_URL", url)
    monkeypatch.setenv("CORDON_SLACK_BOT_TOKEN", "xoxb-test")
    responder = Responder(ledger=Ledger(url))
    ticket = open_manual_case(responder, "aws-access-key-created",
                              {"access_key_id": KEY, "user_name": "build-bot", "account_id": "111122223333"},
                              {"slack_user_id": "U0CAROL03"})
    with SlackStandIn() as slack:
        state = respond(case_id=ticket.case_id, playbook="aws-access-key-created", approval="slack", cloud={},
                        slack={"channel": "C0ALERTS01", "base_url": slack.base_url}, return_state=True)
        assert state.is_failed(), state
        posts = [m for m in slack.messages("C0ALERTS01")]
    (post,) = posts
    assert f"case `{ticket.case_id}`" in post["text"] and "failed before asking for approval" in post["text"]
    assert "<@U0CAROL03>" in post["text"] and "Unable to locate credentials" in post["text"], post["text"]
    kinds = [r.kind for r in responder.ledger.records(case_id=ticket.case_id)]
    assert "run.error" in kinds and "slack.failure_posted" in kinds, kinds
    assert not any(k.startswith("action.") or k == "approval.asked" for k in kinds), kinds
    assert responder.ledger.case(ticket.case_id)["status"] == "error"
    assert responder.ledger.verify().ok
