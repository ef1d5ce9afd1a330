"""The public Azure corpus in ../shared/data/real (see its SOURCES.md), read in place, never copied.

* panther-analysis/rules/azure_activity_rules/*.yml and azure_signin_rules/*.yml
  (panther-labs/panther-analysis @ daa10c88, Apache-2.0): ``Tests[].Log`` with ``ExpectedResult``.
  Despite its name, ``azure_signin_rules`` holds Entra *audit* records (``Azure.Audit`` log type, in
  the Azure Monitor diagnostic form: ``operationName`` plus ``properties.activityDisplayName`` /
  ``initiatedBy`` / ``targetResources``), no sign-in record: every one is classified ``entra_audit``.
* sigma/rules/cloud/azure (SigmaHQ/sigma @ 8eaafff1, DRL 1.1): every rule loads.

Every record is read by intake without a Rejected, and each Panther case is run through the pipeline
with the shipped rules; the expected outcome of every case is listed in ``EXPECTED`` with, where
Cordon judges differently from Panther, the reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from cordon.detections.errors import RecordError, Rejected
from cordon.detections.intake import RawRecord, read_bytes
from cordon.detections.pipeline import DetectStats, detect
from cordon.providers import shipped_rule_dirs
from cordon.providers.azure.detections import (
    detections_from_azure_activity,
    detections_from_entra_audit,
    entra_match_view,
)
from cordon.sigma import RuleSet

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
if not REAL.is_dir():
    pytest.skip(
        f"../shared/data/real is absent: the public corpus is not checked out next to the repo ({REAL})",
        allow_module_level=True,
    )

REPO = Path(__file__).resolve().parents[1]
PANTHER = sorted((REAL / "panther-analysis" / "rules").glob("azure_*/*.yml"))
SIGMAHQ_AZURE = REAL / "sigma" / "rules" / "cloud" / "azure"
DUMMY = SimpleNamespace(id="corpus-dummy", title="dummy", path=None, level="medium", technique_ids=[])

ROLE_FILE = "azure_role_assignment_privileged_or_elevated.yml"
SP_FILE = "azure_service_principal_credentials_added.yml"
RA = "/subscriptions/12345678-1234-1234-1234-123456789abc/providers/Microsoft.Authorization/roleAssignments/"

#: (file, case) -> (outcome, rule title or rejected field, credential (kind, uid) or None). Outcomes:
#: "detect" (a detection not suppressed), "suppressed", "none" (no rule matched), "rejected".
EXPECTED: dict[tuple[str, str], tuple[str, str | None, tuple[str, str] | None]] = {
    (ROLE_FILE, "Owner Role Assignment"): (
        "detect",
        "Azure RBAC Role Assignment Created",
        ("azure_role_assignment", RA + "a1b2c3d4-e5f6-7890-abcd-ef1234567890"),
    ),
    # Reader (acdd72a7-...) is not privileged: recognised, suppressed (Panther: false).
    (ROLE_FILE, "Non-Privileged Role Assignment"): (
        "suppressed",
        "Azure RBAC Role Assignment Created",
        ("azure_role_assignment", RA + "c3d4e5f6-a7b8-9012-cdef-111111111111"),
    ),
    (ROLE_FILE, "Elevated Role Assignment (Storage Blob Data Owner)"): (
        "detect",
        "Azure RBAC Role Assignment Created",
        ("azure_role_assignment", RA + "d4e5f6a7-b8c9-0123-def4-111111111111"),
    ),
    # No credential kind fits an elevation: detected, credential None.
    (ROLE_FILE, "Elevate Access to All Azure Subscriptions"): ("detect", "Azure Elevate Access Action", None),
    ("azure_elevate_user_access_admin.yml", "User Elevated to User Access Administrator"): (
        "detect",
        "Entra User Elevated to User Access Administrator",
        None,
    ),
    ("azure_elevate_user_access_admin.yml", "Different Operation"): ("none", None, None),
    # Difference: Panther flags guest invitations from outside the org (T1078). Cordon ships no rule
    # for invitations: a pending invitation is neither a credential nor a role grant to contain.
    ("azure_invite_external_users.yml", "Successful Invite external user"): ("none", None, None),
    ("azure_invite_external_users.yml", "Same org successful invite"): ("none", None, None),
    ("azure_invite_external_users.yml", "Unsuccessful invite"): ("none", None, None),
    ("azure_invite_external_users.yml", "Not external invite"): ("none", None, None),
    ("azure_role_changed_pim.yml", "Successfully added PIM role"): (
        "detect",
        "Principal Added to an Entra Directory Role",
        ("azure_directory_role", "12345#12345"),
    ),
    # A PIM request that has not completed grants nothing: no rule matches.
    ("azure_role_changed_pim.yml", "requested adding PIM role"): ("none", None, None),
    # Difference: Panther's rule is about PIM only; a direct "Add member to role" is a role grant
    # (T1098.003) for Cordon, named by the role template id and the member's object id.
    ("azure_role_changed_pim.yml", "Add member to role (Non PIM)"): (
        "detect",
        "Principal Added to an Entra Directory Role",
        ("azure_directory_role", "123415#12345"),
    ),
    # The test log's modifiedProperties carry only a KeyDescription text ("Client Secret for API
    # Access") and a KeyType, no KeyIdentifier: the new credential cannot be named, so the detection
    # carries it with uid None; the playbook that answers it (azure-sp-credential-unnamed) removes
    # the one credential whose startDateTime matches the record, and disables the owner only when
    # no single one does: it never guesses a key.
    (SP_FILE, "Add Service Principal Credentials"): (
        "detect",
        "Credentials Added to an Entra Application or Service Principal",
        ("azure_sp_password", None),
    ),
    # Difference: Panther's rule is about credentials; a new service principal is T1136.003 for Cordon.
    (SP_FILE, "Create Service Principal"): (
        "detect",
        "Entra Service Principal or Application Created",
        ("azure_service_principal", "sp-new-789"),
    ),
}


def panther_cases() -> dict[tuple[str, str], tuple[bool, dict]]:
    cases = {}
    for path in PANTHER:
        spec = yaml.safe_load(path.read_text())
        for test in spec.get("Tests") or []:
            log = test["Log"]
            if isinstance(log, str):
                log = json.loads(log)
            cases[(path.name, test["Name"])] = (bool(test["ExpectedResult"]), log)
    return cases


@pytest.fixture(scope="module")
def shipped() -> RuleSet:
    return RuleSet.load(shipped_rule_dirs())


def test_corpus_present():
    assert len(PANTHER) == 5
    assert set(panther_cases()) == set(EXPECTED)


def test_every_record_is_read_and_classified():
    for (name, case), (_, log) in panther_cases().items():
        items = list(read_bytes(name, json.dumps(log).encode()))
        assert len(items) == 1 and isinstance(items[0], RawRecord), (name, case, items)
        wanted = "azure_activity" if name == ROLE_FILE else "entra_audit"
        assert items[0].kind == wanted, (name, case)


def test_every_record_parses_or_names_its_field():
    for (name, case), (_, log) in panther_cases().items():
        parse = detections_from_azure_activity if name == ROLE_FILE else detections_from_entra_audit
        outcome, field, _ = EXPECTED[(name, case)]
        if outcome == "rejected":
            with pytest.raises(RecordError) as exc:
                parse(log, DUMMY, name, 0)
            assert exc.value.field == field and "KeyIdentifier" in exc.value.reason
            continue
        dets = parse(log, DUMMY, name, 0)
        assert dets, (name, case)
        for det in dets:
            assert det.provider == "azure" and det.time is not None
            assert det.account_uid or name == ROLE_FILE and case.startswith("Elevate"), (name, case)


def test_panther_cases_through_the_pipeline(shipped):
    for (name, case), (panther_expected, log) in panther_cases().items():
        outcome, what, credential = EXPECTED[(name, case)]
        stats = DetectStats()
        out = list(detect(read_bytes(name, json.dumps(log).encode()), shipped, stats))
        if outcome == "none":
            assert out == [] and stats.events_unmatched == 1, (name, case)
            continue
        (item,) = out
        if outcome == "rejected":
            assert isinstance(item, Rejected) and item.field == what and item.origin == name, (name, case)
            continue
        assert not isinstance(item, Rejected), (name, case, item.message())
        assert item.rule.name == what, (name, case)
        assert bool(item.suppressed) == (outcome == "suppressed"), (name, case, item.suppressed)
        got = (item.credential.kind, item.credential.uid) if item.credential else None
        assert got == credential, (name, case)
        # Panther negatives must never lead to containment
        if not panther_expected and outcome == "detect":
            assert (name, case) in {
                ("azure_role_changed_pim.yml", "Add member to role (Non PIM)"),
                (SP_FILE, "Create Service Principal"),
            }


def test_role_assignment_actor_and_assignee():
    _, log = panther_cases()[(ROLE_FILE, "Owner Role Assignment")]
    (det,) = detections_from_azure_activity(log, DUMMY, "x", 0)
    # the assignee is the request body's PrincipalId, not the caller's evidence.principalId
    assert det.credential.owner.uid == "770797c4-e05a-43f9-bda2-1f1f379987ae"
    assert det.credential.owner.type == "ServicePrincipal"
    assert det.credential.attributes["roleName"] == "Owner"
    assert det.actor.src_ip == "1.1.1.1" and det.account_uid == "12345678-1234-1234-1234-123456789abc"


def test_every_sigmahq_azure_rule_loads():
    # 12 audit/activity rules at the snapshot, plus the AKS (Kubernetes) twins added to the corpus later
    files = sorted(SIGMAHQ_AZURE.rglob("*.yml"))
    assert len(files) >= 12
    rules = RuleSet.load(SIGMAHQ_AZURE)
    assert len(rules) == len(files)
    assert {r.service for r in rules} == {"auditlogs", "activitylogs"}


def test_sigmahq_app_credential_trap_and_the_fixed_rule(shipped):
    """SigmaHQ's azure_app_credential_added.yml matches only a literal properties.message (with an en
    dash): the real "Add service principal credentials" record does not match it; Cordon's rule does."""
    _, log = panther_cases()[(SP_FILE, "Add Service Principal Credentials")]
    sigmahq = RuleSet.load(SIGMAHQ_AZURE / "audit_logs" / "azure_app_credential_added.yml")
    view = entra_match_view(log)
    assert sigmahq.match(view, product="azure", service="auditlogs") == []
    assert sigmahq.match(log, product="azure", service="auditlogs") == []
    titles = [m.title for m in shipped.match(view, product="azure", service="auditlogs")]
    assert titles == ["Credentials Added to an Entra Application or Service Principal"]
