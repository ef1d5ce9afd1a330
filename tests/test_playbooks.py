"""Playbooks: the shipped ones load; bad ones fail with file, line and field; routing; templates."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cordon.config import load_config
from cordon.detections.model import Actor, Credential, Detection, Principal, RawRef, RuleRef
from cordon.playbooks.schema import PlaybookError, load_playbook_text, load_playbooks, render_params, route

GOOD = """\
name: test-book
description: test
when:
  provider: aws
  credential_kinds: [aws_access_key]
contain:
  - action: aws.deactivate-access-key
    with:
      user_name: "{{ credential.owner.name }}"
      access_key_id: "{{ credential.uid }}"
"""


def make_detection(kind="aws_access_key", uid="AKIAEXAMPLE000000001", owner="bob", source="cloudtrail",
                   event_name="CreateAccessKey", suppressed=None) -> Detection:
    return Detection(
        uid="d-" + uid, provider="aws", source=source, event_name=event_name, technique_ids=["T1098.001"],
        rule=RuleRef(type="sigma", uid="r1", name="rule"), severity="medium", time=datetime.now(UTC),
        account_uid="111122223333", region="us-east-1",
        actor=Actor(user=Principal(uid="arn:aws:iam::111122223333:user/mallory", name="mallory")),
        target=Principal(uid=f"arn:aws:iam::111122223333:user/{owner}", name=owner),
        credential=Credential(kind=kind, uid=uid, owner=Principal(name=owner)),
        suppressed=suppressed, raw_ref=RawRef(origin="t", position=0, sha256="0" * 64), raw={})


def test_shipped_playbooks_load():
    books = load_playbooks(load_config().playbooks_dir)
    names = {b.name for b in books}
    assert {"aws-access-key-created", "aws-login-profile", "aws-federation-token", "aws-backdoor-user",
            "aws-key-pair", "aws-service-specific-credential", "aws-admin-policy-attached",
            "aws-admin-inline-policy", "aws-finding-triage"} <= names


@pytest.mark.parametrize("kind,expected", [
    ("aws_access_key", "aws-access-key-created"),
    ("aws_login_profile", "aws-login-profile"),
    ("aws_federation_token", "aws-federation-token"),
    ("aws_iam_user", "aws-backdoor-user"),
    ("aws_key_pair", "aws-key-pair"),
])
def test_routing_by_credential_kind(kind, expected):
    books = load_playbooks(load_config().playbooks_dir)
    assert route(books, make_detection(kind=kind)).name == expected


def test_suppressed_detection_gets_no_playbook():
    books = load_playbooks(load_config().playbooks_dir)
    assert route(books, make_detection(suppressed="GuardDuty sample finding")) is None


def test_finding_without_credential_goes_to_triage():
    books = load_playbooks(load_config().playbooks_dir)
    det = make_detection(source="securityhub", event_name=None).model_copy(update={"credential": None})
    assert route(books, det).name == "aws-finding-triage"
    det_ct = make_detection().model_copy(update={"credential": None})
    assert route(books, det_ct) is None


@pytest.mark.parametrize("text,field,line", [
    (GOOD.replace("aws.deactivate-access-key", "aws.no-such-action"), "contain.0.action", 7),
    (GOOD.replace("      access_key_id", "      acces_key_id"), "contain.0.with.acces_key_id", 10),
    (GOOD.replace("provider: aws", "provider: oracle"), "when.provider", 4),
    (GOOD.replace("name: test-book", "name: Test Book!"), "name", 1),
    (GOOD + "approval:\n  expire_after: soon\n", "approval.expire_after", 12),
    (GOOD + "bogus: 1\n", "bogus", 11),
])
def test_bad_playbooks_name_file_line_and_field(text, field, line):
    with pytest.raises(PlaybookError) as exc:
        load_playbook_text(text, "cordon/defaults/playbooks/broken.yaml")
    assert exc.value.field == field
    assert exc.value.line == line
    assert str(exc.value).startswith(f"cordon/defaults/playbooks/broken.yaml:{line}: field '{field}'")


def test_enrich_action_under_contain_is_refused():
    text = GOOD.replace("aws.deactivate-access-key", "aws.actor").replace(
        '    with:\n      user_name: "{{ credential.owner.name }}"\n      access_key_id: "{{ credential.uid }}"\n', "")
    with pytest.raises(PlaybookError, match="enrich action, not allowed under 'contain'"):
        load_playbook_text(text, "x.yaml")


def test_render_keeps_types_and_refuses_undefined():
    det = make_detection()
    from cordon.playbooks.schema import template_context

    ctx = template_context(det)
    assert render_params({"k": "{{ credential.uid }}", "t": "{{ detection.technique_ids }}",
                          "s": "key {{ credential.uid }}"}, ctx) == {
        "k": "AKIAEXAMPLE000000001", "t": ["T1098.001"], "s": "key AKIAEXAMPLE000000001"}
    with pytest.raises(ValueError, match="with.k"):
        render_params({"k": "{{ credential.nothing_here }}"}, ctx)


def test_loaded_playbooks_are_kept_per_content_and_handed_out_as_copies(tmp_path):
    """A run asks for the playbooks several times (issue 13: ~0.2 s a parse): the parsed set is
    kept per content, an edited file is parsed again, and each caller gets its own copies."""
    import shutil

    folder = tmp_path / "playbooks"
    shutil.copytree(load_config().playbooks_dir, folder)
    first, second = load_playbooks(folder), load_playbooks(folder)
    assert [p.name for p in first] == [p.name for p in second]
    assert first[0] is not second[0] and first[0] == second[0]
    first[0].description = "changed by one caller"
    assert load_playbooks(folder)[0].description != "changed by one caller"
    target = folder / "aws-access-key-created.yaml"
    assert "\npriority: 10\n" in target.read_text()
    target.write_text(target.read_text().replace("\npriority: 10\n", "\npriority: 7\n"))
    assert next(p for p in load_playbooks(folder) if p.name == "aws-access-key-created").priority == 7
    target.write_text("name: [broken")
    for _ in range(2):  # an invalid set is never kept: it is refused every time
        try:
            load_playbooks(folder)
        except PlaybookError as exc:
            assert "aws-access-key-created.yaml" in str(exc)
        else:
            raise AssertionError("an invalid playbook loaded")
