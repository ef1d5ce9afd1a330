"""Kubernetes audit records in every layout collectors deliver (plain Events, EventList, EKS
CloudWatch Logs subscription, GKE Cloud Audit Log, AKS kube-audit with ``properties.log`` as an object
and as JSON text), read by the real intake and matched by Cordon's shipped rules. Samples come from
the public corpus in ../shared/data/real (SOURCES.md), read in place, never copied."""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path

import pytest
import yaml

from cordon.detections.errors import Rejected
from cordon.detections.intake import RawRecord, read_inputs
from cordon.detections.pipeline import detect
from cordon.providers import shipped_rule_dirs
from cordon.sigma import RuleSet

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
if not REAL.is_dir():
    pytest.skip(f"../shared/data/real is absent ({REAL})", allow_module_level=True)

PANTHER = REAL / "panther-analysis" / "rules" / "kubernetes_rules"
ELASTIC = REAL / "elastic-integrations" / "packages" / "kubernetes" / "data_stream" / "audit_logs" / "_dev" / "test" \
    / "pipeline"
#: Panther cases where Cordon's rule answers otherwise, on purpose: Panther's privileged set is wider
#: (``admin``, ``system:kube-controller-manager``: outside this rule, which names cluster-admin and
#: system:masters only) and Panther ignores RoleBindings (a RoleBinding to cluster-admin gives full
#: control of its namespace, which Cordon contains).
CORDON_DIFFERS = {
    "GKE ClusterRoleBinding to admin role": (False, "admin is outside cluster-admin / system:masters"),
    "EKS ClusterRoleBinding to controller-manager role": (False, "system:kube-controller-manager is outside"),
    "RoleBinding (not ClusterRoleBinding)": (True, "a RoleBinding to cluster-admin is contained too"),
}
BINDING_RULE = "3c1e6a1e-8f0b-4d55-9b51-0d7a1c2f5e01"


@pytest.fixture(scope="module")
def shipped() -> RuleSet:
    return RuleSet.load(shipped_rule_dirs())


def panther_tests(name: str) -> list[tuple[str, bool, dict]]:
    spec = yaml.safe_load((PANTHER / name).read_text())
    return [(t["Name"], t["ExpectedResult"], t["Log"]) for t in spec["Tests"]]


def stamped(log: dict) -> dict:
    """Panther's hand-written logs carry no time (Panther adds ``p_event_time``); real ones always
    do: give each layout its timestamp field when absent."""
    log = json.loads(json.dumps(log))
    if "protoPayload" in log:
        log.setdefault("timestamp", "2026-12-05T10:00:00Z")
    elif "properties" in log:
        log.setdefault("time", "2026-12-05T10:00:00Z")
    else:
        log.setdefault("requestReceivedTimestamp", "2026-12-05T10:00:00Z")
    return log


def run(tmp_path: Path, rules: RuleSet, lines: list[str], name: str = "in.jsonl") -> list:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return list(detect(read_inputs([path]), rules))


def awslogs(events: list[dict], group: str = "/aws/eks/prod-1/cluster") -> dict:
    """The CloudWatch Logs subscription envelope (Lambda event) around Events, as AWS builds it."""
    payload = {"messageType": "DATA_MESSAGE", "owner": "111122223333", "logGroup": group,
               "logStream": "kube-apiserver-audit-0a1b2c", "subscriptionFilters": ["to-cordon"],
               "logEvents": [{"id": str(i), "timestamp": 1700000000000 + i,
                              "message": e if isinstance(e, str) else json.dumps(e)} for i, e in enumerate(events)]}
    return {"awslogs": {"data": base64.b64encode(gzip.compress(json.dumps(payload).encode())).decode()}}


def test_elastic_samples_every_layout_is_read_as_kubernetes(tmp_path):
    """Each record of Elastic's audit samples (plain Events, a GKE entry, AKS records with
    ``properties.log`` as an object and as JSON text) is classified as a Kubernetes audit record."""
    records = list(read_inputs([ELASTIC / "test-audit.log", ELASTIC / "test-kube-audit.log"]))
    assert records and all(isinstance(r, RawRecord) for r in records), [getattr(r, "reason", r) for r in records]
    assert {r.kind for r in records} == {"k8s_audit"}
    from cordon.providers.kubernetes.events import event_of, layout

    layouts = {layout(r.record) for r in records}
    assert layouts == {"plain", "aks", "gke"}
    logs = {type(r.record["properties"]["log"]) for r in records if layout(r.record) == "aks"}
    assert logs == {dict, str}  # properties.log as an object and as JSON text
    for r in records:
        assert isinstance(event_of(r.record).get("verb"), str)


@pytest.mark.parametrize("name,expected,log", panther_tests("k8s_clusterrolebinding_privileged.yml"),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_panther_cluster_admin_binding_cases(tmp_path, shipped, name, expected, log):
    """Panther's own test events (plain, AKS with properties.log as JSON text, GKE) and their
    ExpectedResult: Cordon's binding rule fires on exactly the ones Panther expects."""
    log = stamped(log)
    out = run(tmp_path, shipped, [json.dumps(log)])
    assert not [o for o in out if isinstance(o, Rejected)], out
    fired = [d for d in out if d.rule.uid == BINDING_RULE and not d.suppressed]
    expected, _why = CORDON_DIFFERS.get(name, (expected, ""))
    assert bool(fired) == expected, (name, out)
    for d in fired:
        assert d.credential.kind == "k8s_role_binding"
        assert d.credential.uid.rsplit("/", 2)[-2] in ("clusterrolebindings", "rolebindings")
        assert d.credential.attributes["roleRef"]["name"] in ("cluster-admin", "system:masters")


def test_user_binding_cluster_admin_plain_aks_object_and_eks(tmp_path, shipped):
    """One user binding cluster-admin, delivered plain, as an AKS record with properties.log an
    object, as an EventList and inside an EKS subscription payload: one detection each, naming the
    binding and the actor; the cluster is read from the layout where it names one."""
    _, _, event = panther_tests("k8s_clusterrolebinding_privileged.yml")[0]
    event = {k: v for k, v in event.items() if not k.startswith("p_")}
    event["requestReceivedTimestamp"] = "2026-12-05T10:00:00Z"
    aks = {"category": "kube-audit-admin", "properties": {"log": event},
           "resourceId": "/SUBSCRIPTIONS/S/RESOURCEGROUPS/RG/PROVIDERS/MICROSOFT.CONTAINERSERVICE/"
                         "MANAGEDCLUSTERS/AKS-1",
           "time": "2026-12-05T10:00:00Z"}
    lines = [json.dumps(event), json.dumps(aks), json.dumps({"kind": "EventList", "items": [event]}),
             json.dumps(awslogs([event]))]
    out = run(tmp_path, shipped, lines)
    dets = [d for d in out if not isinstance(d, Rejected)]
    assert len(dets) == 4, out
    assert {d.credential.uid for d in dets} == {"clusterrolebindings/backdoor-admin"}
    assert {d.actor.user.uid for d in dets} == {"attacker@example.com"}
    assert [d.account_uid for d in dets] == [None, "aks-1", None, "prod-1"]
    assert all(d.suppressed is None for d in dets)


def test_harmless_role_and_controller_token_secret_contain_nothing(tmp_path, shipped):
    """A binding to a harmless role matches no rule; the controller manager creating a token Secret
    matches none of Cordon's rules either."""
    _, _, event = panther_tests("k8s_clusterrolebinding_privileged.yml")[0]
    harmless = json.loads(json.dumps(event))
    harmless["requestObject"]["roleRef"]["name"] = "view"
    secret = {"kind": "Event", "apiVersion": "audit.k8s.io/v1", "verb": "create",
              "user": {"username": "system:kube-controller-manager"},
              "objectRef": {"resource": "secrets", "namespace": "kube-system", "name": "tok", "apiVersion": "v1"},
              "responseStatus": {"code": 201}, "requestReceivedTimestamp": "2026-12-05T10:00:00Z",
              "requestObject": {"type": "kubernetes.io/service-account-token"}}
    by_sa = {**secret, "user": {"username": "system:serviceaccount:kube-system:token-controller"}}
    out = run(tmp_path, shipped, [json.dumps(harmless), json.dumps(secret), json.dumps(by_sa)])
    assert not [o for o in out if isinstance(o, Rejected)]
    assert [d for d in out if not getattr(d, "suppressed", None)] == []
    person = {**secret, "user": {"username": "eve@example.com"}}
    (det,) = run(tmp_path, shipped, [json.dumps(person)])  # the same Secret made by a person is seen
    assert det.credential.kind == "k8s_secret" and det.suppressed is None


def test_gke_entry_binding_cluster_admin_is_detected(tmp_path, shipped):
    """Panther's GKE binding entry with its roleRef changed to cluster-admin: read through the GKE
    layout (methodName, resourceName, request), it names the binding and the cluster's project."""
    _, _, entry = next(t for t in panther_tests("k8s_clusterrolebinding_privileged.yml")
                       if t[0] == "GKE ClusterRoleBinding to admin role")
    entry = stamped(entry)
    entry["protoPayload"]["request"]["roleRef"]["name"] = "cluster-admin"
    (det,) = run(tmp_path, shipped, [json.dumps(entry)])
    assert det.rule.uid == BINDING_RULE and det.suppressed is None
    assert det.credential.uid == "clusterrolebindings/admin-binding"
    assert det.actor.user.uid == "user@company.com" and det.actor.src_ip == "8.8.8.8"


def test_malformed_records_are_named_dead_letters_and_the_rest_goes_on(tmp_path, shipped):
    """A bad AKS properties.log, an EKS message that is not JSON and bad base64 each end as a dead
    letter naming the field and position; the good record after them still gives its detection."""
    _, _, event = panther_tests("k8s_clusterrolebinding_privileged.yml")[0]
    event = {**event, "requestReceivedTimestamp": "2026-12-05T10:00:00Z"}
    bad_aks = {"category": "kube-audit", "properties": {"log": "{not json"}}
    lines = [json.dumps(bad_aks), json.dumps(awslogs(["{oops", event])),
             json.dumps({"awslogs": {"data": "!!!"}}), json.dumps(event)]
    out = run(tmp_path, shipped, lines)
    rejected = [o for o in out if isinstance(o, Rejected)]
    assert [(r.position, r.field) for r in rejected] == [
        (0, "properties.log"), (1, "logEvents[0].message"), (3, "awslogs.data")], rejected
    assert all(str(tmp_path / "in.jsonl") == r.origin for r in rejected)
    dets = [o for o in out if not isinstance(o, Rejected)]
    assert [d.raw_ref.position for d in dets] == [2, 4]


def test_failed_call_is_suppressed(tmp_path, shipped):
    _, _, event = panther_tests("k8s_clusterrolebinding_privileged.yml")[0]
    event = {**event, "requestReceivedTimestamp": "2026-12-05T10:00:00Z", "responseStatus": {"code": 403}}
    assert [d for d in run(tmp_path, shipped, [json.dumps(event)]) if not isinstance(d, Rejected)] == []


SIGMAHQ = REAL / "sigma" / "rules" / "application" / "kubernetes" / "audit"


def test_sigmahq_rules_load_and_the_ones_that_can_never_match_are_reported():
    """SigmaHQ's Kubernetes audit rules load; the five that can never match an Event (SOURCES.md's
    known traps) are left out, each reported with its file and the reason."""
    rules = RuleSet.load(SIGMAHQ)
    reported = {Path(p).name: why for p, _, why in rules.problems}
    assert reported.keys() == {"kubernetes_audit_rbac_permisions_listing.yml", "kubernetes_audit_sidecar_injection.yml",
                               "kubernetes_audit_hostpath_mount.yml", "kubernetes_audit_privileged_pod_creation.yml",
                               "kubernetes_audit_potential_enumeration_activity.yml"}
    assert "objectRef.apiGroup" in reported["kubernetes_audit_rbac_permisions_listing.yml"]
    assert "'ALLOW'" in reported["kubernetes_audit_potential_enumeration_activity.yml"]
    assert len(rules) == len(list(SIGMAHQ.glob("*.yml"))) - 5


def test_sigmahq_rules_run_natively_on_every_layout(tmp_path):
    """SigmaHQ's service-account creation rule (logsource category application, product
    kubernetes, service audit) fires on an Event delivered plain and inside a GKE entry."""
    rules = RuleSet.load(SIGMAHQ / "kubernetes_audit_serviceaccount_creation.yml")
    event = {"kind": "Event", "apiVersion": "audit.k8s.io/v1", "verb": "create",
             "user": {"username": "eve@example.com"}, "requestReceivedTimestamp": "2026-12-05T10:00:00Z",
             "objectRef": {"resource": "serviceaccounts", "namespace": "default", "name": "backdoor",
                           "apiVersion": "v1"}, "responseStatus": {"code": 201}}
    gke = {"protoPayload": {"@type": "type.googleapis.com/google.cloud.audit.AuditLog", "serviceName": "k8s.io",
                            "methodName": "io.k8s.core.v1.serviceaccounts.create",
                            "resourceName": "core/v1/namespaces/default/serviceaccounts/backdoor",
                            "authenticationInfo": {"principalEmail": "eve@example.com"}},
           "resource": {"type": "k8s_cluster", "labels": {"cluster_name": "gke-1", "project_id": "p"}},
           "timestamp": "2026-12-05T10:00:00Z"}
    out = run(tmp_path, rules, [json.dumps(event), json.dumps(gke)])
    assert [(d.credential.kind, d.credential.uid, d.account_uid) for d in out] == [
        ("k8s_service_account", "namespaces/default/serviceaccounts/backdoor", None),
        ("k8s_service_account", "namespaces/default/serviceaccounts/backdoor", "gke-1")], out


def test_shipped_kubernetes_rules_all_load_and_cite_a_basis(shipped):
    """Every Kubernetes rule Cordon ships loads (none reported as unable to match) and cites the
    rule it is based on (Panther, Elastic, SigmaHQ or Falco) in its references or description."""
    rules_dir = Path(__file__).resolve().parents[1] / "cordon" / "providers" / "kubernetes" / "rules"
    assert not [p for p in shipped.problems if str(rules_dir) in str(p[0])]
    files = sorted(rules_dir.glob("*.yml"))
    assert len(files) == 6
    for path in files:
        spec = yaml.safe_load(path.read_text())
        text = " ".join(spec["references"]) + spec["description"]
        assert any(b in text for b in ("panther", "Panther", "Elastic", "SigmaHQ", "Falco")), path.name
        assert any(r.match.path == str(path) for r in shipped), path.name


#: Panther cases Cordon answers otherwise, on purpose: Cordon never contains a system: principal
#: (its detection is suppressed), where Panther alerts on one outside a system namespace.
TOKEN_DIFFERS = {"System principal in user namespace (alert)": False}


@pytest.mark.parametrize("rule_file,kind,differs", [
    ("k8s_serviceaccount_token_created.yml", "k8s_sa_token", TOKEN_DIFFERS),
    ("k8s_client_certificate_created.yml", "k8s_csr", {}),
])
def test_panther_token_and_csr_cases(tmp_path, shipped, rule_file, kind, differs):
    """Panther's token-request and client-certificate test events in every layout they come in:
    a detection of the expected kind, not suppressed, exactly where Panther expects an alert."""
    for name, expected, log in panther_tests(rule_file):
        out = run(tmp_path, shipped, [json.dumps(stamped(log))])
        assert not [o for o in out if isinstance(o, Rejected)], (name, out)
        live = [d for d in out if not d.suppressed and d.credential and d.credential.kind == kind]
        assert bool(live) == differs.get(name, expected), (name, out)


def test_the_readme_example_is_one_cluster_admin_binding(shipped):
    """examples/k8s-cluster-admin-binding.json (the README's Kubernetes line) is read and matched."""
    path = Path(__file__).resolve().parents[1] / "examples" / "k8s-cluster-admin-binding.json"
    (det,) = list(detect(read_inputs([path]), shipped))
    assert det.rule.uid == BINDING_RULE and det.suppressed is None
    assert (det.credential.kind, det.credential.uid) == ("k8s_role_binding", "clusterrolebindings/ops-break-glass")
    assert det.credential.attributes["roleRef"]["name"] == "cluster-admin"
