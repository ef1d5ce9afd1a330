"""Tests for cordon.sigma: Sigma modifiers/conditions, error reporting, shipped AWS rules.

Real data is read from ../shared/data/real (see its SOURCES.md):
  * stratus-red-team/docs/detonation-logs/*.json  (DataDog/stratus-red-team @ 7c9a7a5a, Apache-2.0)
  * panther-analysis/rules/aws_cloudtrail_rules/*.yml  (panther-labs/panther-analysis @ daa10c88)
  * sigma/rules/cloud/**  (SigmaHQ/sigma @ 8eaafff1, DRL 1.1)
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml

from cordon.sigma import RuleSet, SigmaMatch, SigmaRuleError

REPO = Path(__file__).resolve().parents[1]
RULES_DIR = REPO / "cordon" / "providers" / "aws" / "rules"
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
STRATUS = REAL / "stratus-red-team" / "docs" / "detonation-logs"
PANTHER = REAL / "panther-analysis" / "rules" / "aws_cloudtrail_rules"
SIGMAHQ_CLOUD = REAL / "sigma" / "rules" / "cloud"


def _require_real() -> None:
    if not REAL.is_dir():
        pytest.skip(f"../shared/data/real absent: {REAL} not found")


def make_rules(detection: str, logsource: str = "product: aws\n    service: cloudtrail") -> RuleSet:
    """One inline rule with the given detection block (YAML, indented by 4 under detection)."""
    text = (
        "title: Test rule\n"
        "id: 11111111-2222-4333-8444-555555555555\n"
        "status: test\n"
        "logsource:\n"
        f"    {logsource}\n"
        "detection:\n" + textwrap.indent(textwrap.dedent(detection).strip("\n"), "    ") + "\n"
        "level: low\n"
    )
    return RuleSet.from_yaml(text)


def hits(rs: RuleSet, event: dict) -> bool:
    return bool(rs.match(event))


# ---------------------------------------------------------------------------------------------
# Values and modifiers
# ---------------------------------------------------------------------------------------------


def test_plain_string_is_case_insensitive_whole_value():
    rs = make_rules("""
        sel:
            eventName: CreateAccessKey
        condition: sel
    """)
    assert hits(rs, {"eventName": "createaccesskey"})
    assert hits(rs, {"eventName": "CreateAccessKey"})
    assert not hits(rs, {"eventName": "CreateAccessKeyX"})
    assert not hits(rs, {"eventName": None})
    assert not hits(rs, {})


def test_cased_modifier():
    rs = make_rules("""
        sel:
            eventName|cased: CreateAccessKey
        condition: sel
    """)
    assert hits(rs, {"eventName": "CreateAccessKey"})
    assert not hits(rs, {"eventName": "createaccesskey"})


def test_wildcards_and_escapes():
    rs = make_rules("""
        sel:
            userAgent: 'aws-cli/?.* Python*'
        condition: sel
    """)
    assert hits(rs, {"userAgent": "aws-cli/2.15.0 Python/3.11"})
    assert hits(rs, {"userAgent": "AWS-CLI/1.x PYTHON"})
    assert not hits(rs, {"userAgent": "aws-cli/12.0 Python"})  # ? is exactly one character
    assert not hits(rs, {"userAgent": "boto3 aws-cli/2.1 Python"})
    escaped = make_rules(r"""
        sel:
            requestParameters.policyName: 'star\*'
        condition: sel
    """)
    assert hits(escaped, {"requestParameters": {"policyName": "star*"}})
    assert not hits(escaped, {"requestParameters": {"policyName": "starfish"}})


def test_contains_startswith_endswith():
    rs = make_rules("""
        c:
            userIdentity.arn|contains: ':role/aws-service-role/'
        s:
            userIdentity.arn|startswith: 'arn:aws:sts::'
        e:
            userIdentity.arn|endswith: '/alice'
        condition: c or s or e
    """)
    assert hits(rs, {"userIdentity": {"arn": "arn:aws:iam::1:ROLE/aws-service-role/x"}})
    assert hits(rs, {"userIdentity": {"arn": "ARN:AWS:STS::1:assumed-role/r/bob"}})
    assert hits(rs, {"userIdentity": {"arn": "arn:aws:iam::1:user/Alice"}})
    assert not hits(rs, {"userIdentity": {"arn": "arn:aws:iam::1:user/alice2"}})
    only_starts = make_rules("""
        s:
            userIdentity.arn|startswith: 'arn:aws:sts::'
        condition: s
    """)
    assert not hits(only_starts, {"userIdentity": {"arn": "x arn:aws:sts::1"}})


def test_value_list_is_or_and_all_modifier_is_and():
    any_of = make_rules("""
        sel:
            eventName:
                - CreateUser
                - CreateLoginProfile
        condition: sel
    """)
    assert hits(any_of, {"eventName": "CreateLoginProfile"})
    assert not hits(any_of, {"eventName": "DeleteUser"})
    all_of = make_rules("""
        sel:
            requestParameters.policyDocument|contains|all:
                - '"Allow"'
                - '"\\*"'
        condition: sel
    """)
    assert hits(all_of, {"requestParameters": {"policyDocument": '{"Effect":"Allow","Action":"*"}'}})
    assert not hits(all_of, {"requestParameters": {"policyDocument": '{"Effect":"Allow","Action":"s3:Get"}'}})


def test_event_list_values_match_any_element():
    rs = make_rules("""
        sel:
            resources.ARN|endswith: ':user/backdoor'
        condition: sel
    """)
    event = {"resources": [{"ARN": "arn:aws:iam::1:user/alice"}, {"ARN": "arn:aws:iam::1:user/backdoor"}]}
    assert hits(rs, event)
    assert not hits(rs, {"resources": [{"ARN": "arn:aws:iam::1:user/alice"}]})
    tags = make_rules("""
        sel:
            tags: prod
        condition: sel
    """)
    assert hits(tags, {"tags": ["dev", "PROD"]})
    assert not hits(tags, {"tags": ["dev"]})


def test_regex_with_flags():
    rs = make_rules("""
        sel:
            userAgent|re: '^aws-cli/2\\.'
        condition: sel
    """)
    assert hits(rs, {"userAgent": "aws-cli/2.15"})
    assert not hits(rs, {"userAgent": "AWS-CLI/2.15"})  # re is case-sensitive by default
    assert not hits(rs, {"userAgent": "boto aws-cli/2.15"})
    unanchored = make_rules("""
        sel:
            userAgent|re: 'Python/3'
        condition: sel
    """)
    assert hits(unanchored, {"userAgent": "aws-cli/2.15 Python/3.11"})
    insensitive = make_rules("""
        sel:
            userAgent|re|i: '^aws-cli/2\\.'
        condition: sel
    """)
    assert hits(insensitive, {"userAgent": "AWS-CLI/2.15"})
    dotall = make_rules("""
        sel:
            requestParameters.policyDocument|re|s: 'Allow.*Resource'
        condition: sel
    """)
    doc = '{"Effect": "Allow",\n"Resource": "*"}'
    assert hits(dotall, {"requestParameters": {"policyDocument": doc}})
    assert not hits(unanchored, {"userAgent": "Python/2"})
    plain_dot = make_rules("""
        sel:
            requestParameters.policyDocument|re: 'Allow.*Resource'
        condition: sel
    """)
    assert not hits(plain_dot, {"requestParameters": {"policyDocument": doc}})
    multiline = make_rules("""
        sel:
            requestParameters.policyDocument|re|m: '^"Resource"'
        condition: sel
    """)
    assert hits(multiline, {"requestParameters": {"policyDocument": doc}})
    assert not hits(plain_dot, {"requestParameters": {"policyDocument": '"Resource" first'}})


def test_exists_modifier():
    rs = make_rules("""
        sel:
            errorCode|exists: true
        condition: sel
    """)
    assert hits(rs, {"errorCode": "AccessDenied"})
    assert not hits(rs, {"eventName": "x"})
    assert not hits(rs, {"errorCode": None})
    absent = make_rules("""
        sel:
            errorCode|exists: false
        condition: sel
    """)
    assert hits(absent, {"eventName": "x"})
    assert not hits(absent, {"errorCode": "AccessDenied"})


def test_null_matches_missing_or_null():
    rs = make_rules("""
        sel:
            eventName: GetObject
            userIdentity.invokedBy: null
        condition: sel
    """)
    assert hits(rs, {"eventName": "GetObject", "userIdentity": {}})
    assert hits(rs, {"eventName": "GetObject", "userIdentity": {"invokedBy": None}})
    assert not hits(rs, {"eventName": "GetObject", "userIdentity": {"invokedBy": "s3.amazonaws.com"}})


def test_cidr_modifier_and_invalid_addresses():
    rs = make_rules("""
        sel:
            sourceIPAddress|cidr:
                - 10.0.0.0/8
                - 2001:db8::/32
        condition: sel
    """)
    assert hits(rs, {"sourceIPAddress": "10.1.2.3"})
    assert hits(rs, {"sourceIPAddress": "2001:db8::1"})
    assert not hits(rs, {"sourceIPAddress": "11.1.2.3"})
    # real corpus shapes: anonymised addresses with leading zeros and AWS service hostnames
    assert not hits(rs, {"sourceIPAddress": "211.9.016.253"})
    assert not hits(rs, {"sourceIPAddress": "cloudformation.amazonaws.com"})
    assert not hits(rs, {"sourceIPAddress": 10})


def test_numbers_compare_numerically():
    rs = make_rules("""
        sel:
            requestParameters.durationSeconds: 129600
        condition: sel
    """)
    assert hits(rs, {"requestParameters": {"durationSeconds": 129600}})
    assert hits(rs, {"requestParameters": {"durationSeconds": 129600.0}})
    assert hits(rs, {"requestParameters": {"durationSeconds": "129600"}})
    assert not hits(rs, {"requestParameters": {"durationSeconds": 3600}})
    assert not hits(make_rules("sel:\n    x: 1\ncondition: sel"), {"x": True})  # bool is not 1
    gte = make_rules("""
        sel:
            requestParameters.durationSeconds|gte: 43200
        condition: sel
    """)
    assert hits(gte, {"requestParameters": {"durationSeconds": 129600}})
    assert not hits(gte, {"requestParameters": {"durationSeconds": 3600}})
    assert not hits(gte, {"requestParameters": {"durationSeconds": "long"}})


def test_booleans_and_boolean_strings():
    rs = make_rules("""
        sel:
            readOnly: false
        condition: sel
    """)
    assert hits(rs, {"readOnly": False})
    assert hits(rs, {"readOnly": "false"})
    assert hits(rs, {"readOnly": "FALSE"})
    assert not hits(rs, {"readOnly": True})
    assert not hits(rs, {"readOnly": 0})
    assert not hits(rs, {"readOnly": "true"})


def test_fieldref_equality():
    rs = make_rules("""
        sel:
            userIdentity.userName|fieldref: requestParameters.userName
        condition: sel
    """)
    assert hits(rs, {"userIdentity": {"userName": "Alice"}, "requestParameters": {"userName": "alice"}})
    assert not hits(rs, {"userIdentity": {"userName": "alice"}, "requestParameters": {"userName": "bob"}})
    assert not hits(rs, {"userIdentity": {"userName": "alice"}, "requestParameters": {}})


def test_fieldref_with_endswith_startswith_contains():
    ends = make_rules("""
        sel:
            userIdentity.arn|fieldref|endswith: requestParameters.userName
        condition: sel
    """)
    own = {
        "userIdentity": {"arn": "arn:aws:sts::98765432:assumed-role/IAM/alice"},
        "requestParameters": {"userName": "alice"},
    }
    other = {
        "userIdentity": {"arn": "arn:aws:sts::98765432:assumed-role/IAM/alice"},
        "requestParameters": {"userName": "bob"},
    }
    assert hits(ends, own)
    assert not hits(ends, other)
    assert not hits(ends, {"userIdentity": {"arn": "x/alice"}, "requestParameters": {"userName": ""}})
    starts = make_rules("""
        sel:
            userIdentity.arn|fieldref|startswith: prefix
        condition: sel
    """)
    assert hits(starts, {"userIdentity": {"arn": "arn:aws:iam::1:user/a"}, "prefix": "arn:aws:iam"})
    assert not hits(starts, {"userIdentity": {"arn": "arn:aws:iam::1:user/a"}, "prefix": "arn:aws:sts"})
    contains = make_rules("""
        sel:
            userIdentity.arn|fieldref|contains: requestParameters.userName
        condition: sel
    """)
    assert hits(
        contains,
        {"userIdentity": {"arn": "arn:aws:iam::1:user/bob-admin"}, "requestParameters": {"userName": "bob"}},
    )
    assert not hits(contains, other)


def test_keyword_detection_matches_any_value():
    rs = make_rules(
        """
        keywords:
            - 'Microsoft.Authorization/roleAssignments/write'
        condition: keywords
    """,
        logsource="product: azure\n    service: activitylogs",
    )
    assert hits(rs, {"operationName": {"value": "MICROSOFT.AUTHORIZATION/ROLEASSIGNMENTS/WRITE"}})
    assert not hits(rs, {"operationName": {"value": "Microsoft.Authorization/roleAssignments/delete"}})
    wild = make_rules("""
        keywords:
            - '*backdoor*'
        condition: keywords
    """)
    assert hits(wild, {"requestParameters": {"tags": [{"value": "my-backdoor-user"}]}})
    assert not hits(wild, {"requestParameters": {"userName": "alice"}})


def test_nested_and_literal_dotted_fields():
    rs = make_rules("""
        sel:
            responseElements.accessKey.accessKeyId|startswith: AKIA
        condition: sel
    """)
    assert hits(rs, {"responseElements": {"accessKey": {"accessKeyId": "AKIAXYZ"}}})
    assert hits(rs, {"responseElements.accessKey.accessKeyId": "AKIAXYZ"})
    assert not hits(rs, {"responseElements": None})
    assert not hits(rs, {"responseElements": {"accessKey": "AKIA"}})


def test_windash_and_base64_values_from_pysigma():
    rs = make_rules("""
        sel:
            cmd|windash|contains: ' -enc '
        condition: sel
    """)
    assert hits(rs, {"cmd": "powershell /enc abc"})
    assert hits(rs, {"cmd": "powershell -enc abc"})
    assert not hits(rs, {"cmd": "powershell enc abc"})
    b64 = make_rules("""
        sel:
            data|base64: 'admin'
        condition: sel
    """)
    assert hits(b64, {"data": "YWRtaW4="})
    assert not hits(b64, {"data": "admin"})


def test_neq_modifier():
    rs = make_rules("""
        sel:
            eventName: ConsoleLogin
            userIdentity.type|neq: IAMUser
        condition: sel
    """)
    assert hits(rs, {"eventName": "ConsoleLogin", "userIdentity": {"type": "Root"}})
    assert not hits(rs, {"eventName": "ConsoleLogin", "userIdentity": {"type": "IAMUser"}})


# ---------------------------------------------------------------------------------------------
# Conditions
# ---------------------------------------------------------------------------------------------

COND_DETECTIONS = """
    selection_a:
        eventName: A
    selection_b:
        eventSource: b.amazonaws.com
    filter:
        errorCode|exists: true
"""


def cond_rules(condition: str) -> RuleSet:
    return make_rules(COND_DETECTIONS + f"    condition: {condition}\n")


A_B = {"eventName": "A", "eventSource": "b.amazonaws.com"}
A_ONLY = {"eventName": "A", "eventSource": "x"}
B_ONLY = {"eventName": "Z", "eventSource": "b.amazonaws.com"}
A_B_FAILED = {**A_B, "errorCode": "AccessDenied"}


def test_condition_and_or_not():
    assert hits(cond_rules("selection_a and selection_b"), A_B)
    assert not hits(cond_rules("selection_a and selection_b"), A_ONLY)
    assert hits(cond_rules("selection_a or selection_b"), B_ONLY)
    assert not hits(cond_rules("selection_a or selection_b"), {"eventName": "Z"})
    assert hits(cond_rules("selection_a and not filter"), A_B)
    assert not hits(cond_rules("selection_a and not filter"), A_B_FAILED)


def test_condition_parentheses_and_precedence():
    # and binds tighter than or: a or (b and not filter)
    rs = cond_rules("selection_a or selection_b and not filter")
    assert hits(rs, {**A_ONLY, "errorCode": "x"})
    grouped = cond_rules("(selection_a or selection_b) and not filter")
    assert not hits(grouped, {**A_ONLY, "errorCode": "x"})
    assert hits(grouped, A_ONLY)
    assert not hits(cond_rules("not (selection_a or selection_b)"), B_ONLY)
    assert hits(cond_rules("not (selection_a or selection_b)"), {"eventName": "Z"})


def test_condition_one_of_and_all_of_pattern():
    assert hits(cond_rules("1 of selection_*"), B_ONLY)
    assert not hits(cond_rules("1 of selection_*"), {"eventName": "Z"})
    assert hits(cond_rules("all of selection_*"), A_B)
    assert not hits(cond_rules("all of selection_*"), A_ONLY)
    assert hits(cond_rules("any of selection_*"), A_ONLY)


def test_condition_one_of_and_all_of_them():
    assert hits(cond_rules("1 of them"), {"errorCode": "x"})
    assert not hits(cond_rules("1 of them"), {"eventName": "Z"})
    assert hits(cond_rules("all of them"), A_B_FAILED)
    assert not hits(cond_rules("all of them"), A_B)


def test_list_of_maps_is_or_and_condition_list_is_or():
    rs = make_rules("""
        sel:
            - eventName: A
            - eventSource: b.amazonaws.com
        condition: sel
    """)
    assert hits(rs, A_ONLY) and hits(rs, B_ONLY)
    assert not hits(rs, {"eventName": "Z"})
    two = cond_rules("\n        - selection_a and selection_b\n        - filter")
    assert hits(two, {"errorCode": "x"})
    assert hits(two, A_B)
    assert not hits(two, A_ONLY)


def test_logsource_filtering():
    rs = make_rules("""
        sel:
            eventName: A
        condition: sel
    """)
    assert rs.match({"eventName": "A"}, product="aws", service="cloudtrail")
    assert not rs.match({"eventName": "A"}, product="azure", service="activitylogs")
    assert not rs.match({"eventName": "A"}, product="aws", service="guardduty")
    no_service = make_rules("sel:\n    eventName: A\ncondition: sel", logsource="product: aws")
    assert no_service.match({"eventName": "A"}, product="aws", service="guardduty")
    assert not no_service.match({"eventName": "A"}, product="gcp", service="gcp.audit")


def test_pre_index_does_not_change_results():
    """Indexed rules (eventName) and an unindexed rule (regex only) in one set, list-valued key."""
    text = (
        RULES_DIR.joinpath("iam_user_created.yml").read_text()
        + "\n---\n"
        + textwrap.dedent("""
        title: Unindexed
        id: 99999999-2222-4333-8444-555555555555
        logsource:
            product: aws
            service: cloudtrail
        detection:
            sel:
                userAgent|re: 'evil'
            condition: sel
        level: low
    """)
    )
    rs = RuleSet.from_yaml(text)
    assert rs.rules[0].index == ("eventName", frozenset({"createuser"}))
    assert rs.rules[1].index is None
    ev = {"eventSource": "iam.amazonaws.com", "eventName": "CreateUser", "userAgent": "evil"}
    assert [m.title for m in rs.match(ev, "aws", "cloudtrail")] == [
        "AWS IAM User Created Outside CloudFormation",
        "Unindexed",
    ]
    assert [m.title for m in rs.match({**ev, "eventName": ["x", "createuser"]}, "aws", "cloudtrail")] == [
        "AWS IAM User Created Outside CloudFormation",
        "Unindexed",
    ]
    assert [m.title for m in rs.match({**ev, "eventName": "GetObject"}, "aws", "cloudtrail")] == ["Unindexed"]


def test_sigma_match_fields():
    rs = RuleSet.load(RULES_DIR / "iam_access_key_created.yml")
    ev = {"eventSource": "iam.amazonaws.com", "eventName": "CreateAccessKey"}
    (m,) = rs.match(ev, product="aws", service="cloudtrail")
    assert isinstance(m, SigmaMatch)
    assert m.id == "2c4d6e8f-0a1b-3c5d-7e9f-1a2b3c4d5e6f"
    assert m.title == "IAM Access Key Created"
    assert m.level == "medium"
    assert m.technique_ids == ("T1098.001",)
    assert m.tags == ("attack.persistence", "attack.t1098.001")
    assert m.author == "nishikawaakira (@nishikawaakira)"
    assert m.references[0] == "https://attack.mitre.org/techniques/T1098/001/"
    assert m.path.endswith("iam_access_key_created.yml")


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def test_unknown_modifier_names_file_field_and_line(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "title: Bad\nlogsource:\n    product: aws\ndetection:\n    selection:\n"
        "        eventName|foo: CreateUser\n    condition: selection\n"
    )
    with pytest.raises(SigmaRuleError) as info:
        RuleSet.load(tmp_path)
    err = info.value
    assert err.path == str(bad)
    assert err.field == "detection.selection.eventName|foo"
    assert "unknown modifier" in err.reason
    assert err.line == 6
    assert str(err).startswith(f"{bad}: field 'detection.selection.eventName|foo': unknown modifier")


def test_unsupported_and_invalid_rules():
    cases = {
        "expand": ("sel:\n    field|expand: '%x%'\ncondition: sel", "detection.sel.field|expand"),
        "bad regex": ("sel:\n    field|re: '('\ncondition: sel", "detection.sel.field|re"),
        "bad cidr": ("sel:\n    ip|cidr: 'not-a-net'\ncondition: sel", "detection.sel.ip|cidr"),
        "undefined identifier": ("sel:\n    a: b\ncondition: sel and nosuch", "detection.condition"),
        "aggregation": ("sel:\n    a: b\ncondition: sel | count() > 5", "detection.condition"),
    }
    for name, (detection, field) in cases.items():
        with pytest.raises(SigmaRuleError) as info:
            make_rules(detection)
        assert info.value.field == field, name
        assert info.value.path == "<inline>"


def test_correlation_rule_is_rejected():
    text = textwrap.dedent("""
        title: Many keys
        correlation:
            type: event_count
            rules: [some-rule]
            group-by: [userIdentity.arn]
            timespan: 1h
            condition:
                gte: 5
    """)
    with pytest.raises(SigmaRuleError) as info:
        RuleSet.from_yaml(text, path="corr.yml")
    assert info.value.field == "correlation"
    assert str(info.value).startswith("corr.yml: field 'correlation'")


def test_yaml_syntax_error_and_missing_title():
    with pytest.raises(SigmaRuleError) as info:
        RuleSet.from_yaml("title: [unclosed\n", path="x.yml")
    assert info.value.field == "<yaml>"
    with pytest.raises(SigmaRuleError) as info:
        RuleSet.from_yaml("logsource: {product: aws}\ndetection: {s: {a: b}, condition: s}\n")
    assert info.value.field == "title"


# ---------------------------------------------------------------------------------------------
# Shipped rules
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> RuleSet:
    return RuleSet.load(RULES_DIR)


def test_shipped_rules_metadata(shipped):
    assert len(shipped.rules) >= 10
    ids = [r.id for r in shipped.rules]
    assert len(set(ids)) == len(ids)
    for r in shipped.rules:
        sr = r.sigma_rule
        assert sr.id is not None and sr.status is not None and sr.description and sr.author
        assert sr.references and sr.falsepositives and sr.level is not None and sr.date is not None
        assert "attack.persistence" in [str(t) for t in sr.tags], r.path
        assert r.match.technique_ids, r.path
        assert (r.product, r.service) == ("aws", "cloudtrail"), r.path
        assert r.index is not None and r.index[0] == "eventName", r.path
        assert "errorCode|exists" in Path(r.path).read_text(), f"{r.path} must filter failed calls"


def test_shipped_rules_ignore_failed_calls(shipped):
    for r in shipped.rules:
        for name in r.index[1]:
            ev = {
                "eventSource": "iam.amazonaws.com",
                "eventName": name,
                "errorCode": "AccessDenied",
                "requestParameters": {
                    "status": "Active",  # UpdateAccessKey: a key made Active (iam_access_key_reactivated)
                    "policyArn": "arn:aws:iam::aws:policy/AdministratorAccess",
                    "policyDocument": '{"Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}',
                },
            }
            # the sources of the shipped rules, and who called (the root-key rule is about Root)
            variants = [(source, who) for source in ("iam.amazonaws.com", "ec2.amazonaws.com", "sts.amazonaws.com",
                                                     "rolesanywhere.amazonaws.com", "eks.amazonaws.com")
                        for who in ({}, {"userIdentity": {"type": "Root"}})]
            for source, who in variants:
                req = ev["requestParameters"] if source != "eks.amazonaws.com" else {
                    **ev["requestParameters"],  # an EKS access policy, not an IAM one
                    "policyArn": "arn:aws:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"}
                failed = {**ev, "requestParameters": req}
                assert not r.matches({**failed, **who, "eventSource": source}), (r.path, name)
                ok = {k: v for k, v in failed.items() if k != "errorCode"}
                if r.matches({**ok, **who, "eventSource": source}):
                    break
            else:
                pytest.fail(f"{r.path}: no successful variant of {name} matched")


def _stratus_events() -> dict[str, list[dict]]:
    _require_real()
    files = sorted(STRATUS.glob("*.json"))
    if not files:
        pytest.skip(f"../shared/data/real absent: no Stratus captures under {STRATUS}")
    return {f.name: json.loads(f.read_text()) for f in files}


def _titles(rs: RuleSet, event: dict) -> set[str]:
    return {m.title for m in rs.match(event, product="aws", service="cloudtrail")}


EXPECTED_STRATUS = {
    "CreateAccessKey": {"IAM Access Key Created", "AWS IAM Access Key Creation for Persistence"},
    "CreateLoginProfile": {
        "AWS IAM Console Login Profile Created",
        "AWS IAM Access Key Creation for Persistence",
    },
    "UpdateLoginProfile": {"AWS IAM Console Password Changed For Another User"},
    "CreateUser": {"AWS IAM User Created Outside CloudFormation"},
    "GetFederationToken": {"AWS STS Federation Token Issued"},
    "AttachUserPolicy": {"AWS IAM Administrative Managed Policy Attached To User"},
    # issue 14, item 6: Roles Anywhere and the backdoor role
    "CreateTrustAnchor": {"IAM Roles Anywhere Trust Anchor Created"},
    "CreateProfile": {"IAM Roles Anywhere Profile Created"},
    "UpdateAssumeRolePolicy": {"AWS IAM Role Trust Policy Updated"},
}


def test_shipped_rules_on_stratus_captures(shipped):
    seen = set()
    for name, events in _stratus_events().items():
        for ev in events:
            got = _titles(shipped, ev)
            expected = EXPECTED_STRATUS.get(ev["eventName"], set())
            if ev.get("errorCode"):
                expected = set()
            assert got == expected, (name, ev["eventName"], got)
            if got:
                seen.add(ev["eventName"])
    assert seen == set(EXPECTED_STRATUS)
    # explicitly: reconnaissance and the failed/cleanup calls of the captures never match
    for name, events in _stratus_events().items():
        for ev in events:
            if ev["eventName"] in ("GetCallerIdentity", "DeleteLoginProfile"):
                assert not _titles(shipped, ev), name


def _panther_cases() -> list[tuple[str, str, bool, dict]]:
    _require_real()
    if not PANTHER.is_dir():
        pytest.skip(f"../shared/data/real absent: {PANTHER} not found")
    cases = []
    for f in sorted(PANTHER.glob("*.yml")):
        spec = yaml.safe_load(f.read_text())
        for t in spec.get("Tests") or []:
            log = t["Log"]
            if isinstance(log, str):
                log = json.loads(log)
            cases.append((f.name, t["Name"], bool(t["ExpectedResult"]), log))
    return cases


# Panther negatives (ExpectedResult false) on which Cordon's rules fire on purpose, with why.
INTENDED_ON_PANTHER_NEGATIVES = {
    # A key a user creates for itself through the API: ATT&CK analytic AN1470 (T1098.001) calls
    # any CreateAccessKey outside normal rotation suspicious, and a stolen key is exactly what
    # creates a second key for its own user.
    ("aws_iam_user_key_created.yml", "user1 create keys for user1"): {
        "IAM Access Key Created",
        "AWS IAM Access Key Creation for Persistence",
    },
    # Panther's rule is about root's *own* keys; root creating a key for another user is still a
    # new access key for that user, which both CreateAccessKey rules are about.
    ("aws_root_access_key_created.yml", "Root Created Access Key For User"): {
        "IAM Access Key Created",
        "AWS IAM Access Key Creation for Persistence",
    },
    # Negative of Panther's CreateUser rule because it is an AttachUserPolicy; it attaches
    # AdministratorAccess, which is what the admin-attach rule detects.
    ("aws_iam_create_user.yml", "IAM User Not Created"): {
        "AWS IAM Administrative Managed Policy Attached To User",
    },
    # An attacker who sets another user's password with reset required still signs in with it
    # and then picks the new password themselves.
    ("aws_user_login_profile_modified.yml", "User changed password for other reset required"): {
        "AWS IAM Console Password Changed For Another User",
    },
}

# Benign negatives that must never match any shipped rule.
BENIGN_NEGATIVES = {
    ("aws_cloudtrail_loginprofilecreatedormodified.yml", "ChangeOwnPassword"),
    ("aws_user_login_profile_modified.yml", "ChangeOwnPassword"),
    ("aws_iam_attach_admin_user_policy.yml", "IAM User Policy Attached without Administrator Access"),
    ("aws_iam_compromised_key_quarantine.yml", "PutUserPolicy-false"),
    ("aws_iam_entity_created_without_cloudformation.yml", "IAM Entity Created Automatically"),
    (
        "aws_iam_entity_created_without_cloudformation.yml",
        "IAM Entity Created Manually With Approved Role Pattern",
    ),
    ("aws_iam_entity_created_without_cloudformation.yml", "Error Manually Creating IAM Entity"),
    ("aws_iam_entity_created_without_cloudformation.yml", "Non IAM Entity Creation Event"),
    ("aws_iam_user_key_created.yml", "CreateKey returns error code"),
    ("aws_key_compromised.yml", "Request Param is null"),
}


def test_shipped_rules_on_panther_negatives(shipped):
    cases = _panther_cases()
    names = {(f, n) for f, n, _, _ in cases}
    assert BENIGN_NEGATIVES <= names and set(INTENDED_ON_PANTHER_NEGATIVES) <= names
    for fname, name, expected, log in cases:
        if expected:
            continue
        got = _titles(shipped, log)
        assert got == INTENDED_ON_PANTHER_NEGATIVES.get((fname, name), set()), (fname, name, got)


def test_shipped_rules_never_match_aws_quarantine_actions(shipped):
    """AWS attaching/putting its AWSCompromisedKeyQuarantine* policies is containment, not attack."""
    quarantine = [
        log
        for fname, name, _, log in _panther_cases()
        if "quarantine" in json.dumps(log.get("requestParameters") or {}).lower()
    ]
    assert len(quarantine) >= 2  # AttachUserPolicy V2 and PutUserPolicy V3
    for log in quarantine:
        assert not _titles(shipped, log), log["requestParameters"]


def test_shipped_rules_on_panther_positives(shipped):
    expected_fire = {
        ("aws_cloudtrail_loginprofilecreatedormodified.yml", "User changed password for other"),
        ("aws_iam_attach_admin_user_policy.yml", "IAM User Policy Attached with Administrator Access"),
        ("aws_iam_create_user.yml", "IAM User Created"),
        ("aws_iam_entity_created_without_cloudformation.yml", "IAM Entity Created Manually"),
        ("aws_iam_user_key_created.yml", "user1 create keys for user2"),
        ("aws_iam_user_key_created.yml", "jack create keys for jackson"),
    }
    by_name = {(f, n): log for f, n, _, log in _panther_cases()}
    for key in expected_fire:
        assert _titles(shipped, by_name[key]), key


def test_put_user_policy_inline_admin():
    rs = RuleSet.load(RULES_DIR / "iam_inline_admin_policy_put_on_user.yml")

    def ev(doc: str, name: str = "p") -> dict:
        return {
            "eventSource": "iam.amazonaws.com",
            "eventName": "PutUserPolicy",
            "requestParameters": {"userName": "u", "policyName": name, "policyDocument": doc},
        }

    assert rs.match(ev('{"Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}'))
    assert rs.match(ev('{\n "Statement": [{"Effect": "Allow",\n "Action": ["s3:GetObject", "*"]}]}'))
    assert rs.match(ev('{"Statement":[{"Action":"*:*","Effect":"Allow","Resource":"*"}]}'))
    assert not rs.match(ev('{"Statement":[{"Effect":"Deny","Action":["*"],"Resource":["*"]}]}', "TestUserDenyAll"))
    assert not rs.match(ev('{"Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}'))
    assert not rs.match(ev('{"Statement":[{"Effect":"Allow","NotAction":"*","Resource":"*"}]}'))
    quarantine = '{"Statement":[{"Effect":"Allow","Action":"*"}]}'  # even if it were an allow
    assert not rs.match(ev(quarantine, "AWSCompromisedKeyQuarantineV3"))


def test_update_login_profile_own_password_variants():
    rs = RuleSet.load(RULES_DIR / "iam_login_profile_updated_for_other_user.yml")
    base = {"eventSource": "iam.amazonaws.com", "eventName": "UpdateLoginProfile"}
    iam_self = {
        **base,
        "userIdentity": {"type": "IAMUser", "userName": "bob", "arn": "arn:aws:iam::1:user/bob"},
        "requestParameters": {"userName": "bob"},
    }
    iam_other = {**iam_self, "requestParameters": {"userName": "carol"}}
    role_other = {
        **base,
        "userIdentity": {"type": "AssumedRole", "arn": "arn:aws:sts::1:assumed-role/IAM/alice"},
        "requestParameters": {"userName": "bob"},
    }
    assert not rs.match(iam_self)
    assert rs.match(iam_other)
    assert rs.match(role_other)


# ---------------------------------------------------------------------------------------------
# SigmaHQ rules
# ---------------------------------------------------------------------------------------------


def test_sigmahq_cloud_rules_parse():
    _require_real()
    if not SIGMAHQ_CLOUD.is_dir():
        pytest.skip(f"../shared/data/real absent: {SIGMAHQ_CLOUD} not found")
    files = sorted(SIGMAHQ_CLOUD.rglob("*.yml"))
    rs = RuleSet.load(SIGMAHQ_CLOUD)
    assert len(rs.rules) == len(files) > 0
    assert {r.product for r in rs.rules} >= {"aws", "azure", "gcp", "m365"}


def test_sigmahq_backdoor_users_keys_is_literal():
    """aws_iam_backdoor_users_keys.yml: `userIdentity.arn|contains: responseElements.accessKey.userName`.

    Without `fieldref` the value is a plain string, so Sigma semantics compare the ARN with the
    literal text "responseElements.accessKey.userName": the filter never applies and the rule
    fires on every successful CreateAccessKey, including a user creating a key for itself.
    """
    _require_real()
    path = SIGMAHQ_CLOUD / "aws" / "cloudtrail" / "aws_iam_backdoor_users_keys.yml"
    if not path.is_file():
        pytest.skip(f"../shared/data/real absent: {path} not found")
    rs = RuleSet.load(path)
    own_key = {
        "eventSource": "iam.amazonaws.com",
        "eventName": "CreateAccessKey",
        "userIdentity": {"arn": "arn:aws:iam::1:user/alice"},
        "responseElements": {"accessKey": {"userName": "alice"}},
    }
    assert [m.title for m in rs.match(own_key, "aws", "cloudtrail")] == ["AWS IAM Backdoor Users Keys"]
    # only an ARN containing the literal field name is filtered
    literal = {**own_key, "userIdentity": {"arn": "x/responseElements.accessKey.userName"}}
    assert rs.match(literal, "aws", "cloudtrail") == []


def test_regex_combined_with_startswith_endswith_contains():
    starts = make_rules("""
        sel:
            userAgent|re|startswith: 'aws-cli/\\d'
        condition: sel
    """)
    assert hits(starts, {"userAgent": "aws-cli/2.15\nmore"})
    assert not hits(starts, {"userAgent": "boto aws-cli/2.15"})
    ends = make_rules("""
        sel:
            userAgent|re|endswith: 'Python/\\d'
        condition: sel
    """)
    assert hits(ends, {"userAgent": "first line\naws-cli Python/3"})
    assert not hits(ends, {"userAgent": "Python/3 aws-cli"})
    contains = make_rules("""
        sel:
            userAgent|re|contains: 'cli|sdk'
        condition: sel
    """)
    assert hits(contains, {"userAgent": "x\naws-sdk-go"})
    assert not hits(contains, {"userAgent": "console.amazonaws.com"})
