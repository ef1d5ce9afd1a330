"""The Kubernetes path end to end: a real audit Event of a user binding cluster-admin (Panther's
test event, ../shared/data/real) -> Sigma -> case -> the respond flow (real Prefect) -> the official
``kubernetes`` client over real HTTP to the stand-in (cordon/sandbox/kubernetes.py) -> the binding
deleted with a uid precondition, verified gone (404) -> a ledger that verifies. Also: the uid
precondition refuses a re-created binding; rollback re-creates the stored one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from kubernetes.client import ApiException

from cordon.action import ActionContext, get_action
from tests.conftest import SHARED_DATA, panther_k8s_event
from tests.responder_fixtures import *  # noqa: F401,F403 - the responder fixture

PANTHER = SHARED_DATA / "panther-analysis" / "rules" / "kubernetes_rules" / "k8s_clusterrolebinding_privileged.yml"
pytestmark = pytest.mark.skipif(not PANTHER.exists(), reason=f"{PANTHER} is absent")


def panther_event(name: str) -> dict:
    return panther_k8s_event("k8s_clusterrolebinding_privileged.yml", name)


def write(tmp_path: Path, *events: dict) -> Path:
    path = tmp_path / "audit.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def test_cluster_admin_binding_is_deleted_exactly_and_verified(responder, k8s, tmp_path):
    event = panther_event("EKS ClusterRoleBinding to cluster-admin")
    harmless = json.loads(json.dumps(event))
    harmless["objectRef"]["name"] = harmless["requestObject"]["metadata"]["name"] = "read-only"
    harmless["requestObject"]["roleRef"]["name"] = "view"
    k8s.standin.put("clusterrolebindings", "", {"metadata": {"name": "attacker-reads"}, "roleRef": {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": event["requestObject"]["subjects"]})
    report = responder.intake([write(tmp_path, event, harmless)])
    assert len(report.cases) == 1
    (s,) = list(responder.run_all(report, approval="auto", stand_ins=k8s))
    assert s["playbook"] == "kubernetes-cluster-admin-binding", s
    assert s["status"] == "contained" and s["verified"] is True, s
    facts = s["enrichment"]["kubernetes.describe-binding"]
    assert facts["actor"] == {"username": "attacker@example.com", "groups": [], "source_ips": ["203.0.113.42"],
                              "user_agent": "kubectl/v1.28.0", "kind": "person"}
    assert facts["binding_now"]["roleRef"]["name"] == "cluster-admin"
    assert facts["subject_other_bindings"] == [{"binding": "clusterrolebindings/attacker-reads", "role": "view"}]
    assert k8s.standin.get("clusterrolebindings", "", "attacker-reads") is not None  # left alone
    (action,) = s["actions"]
    assert action["name"] == "kubernetes.delete-role-binding"
    assert action["before"]["role_ref"]["name"] == "cluster-admin"
    assert action["before"]["subjects"][0]["name"] == "attacker@example.com"
    assert action["after"] is None
    (call,) = action["calls"]
    assert call["operation"] == "delete_cluster_role_binding"
    assert call["params"]["precondition_uid"] == action["before"]["uid"]
    rbac = k8s.clients("rbac")
    with pytest.raises(ApiException) as err:
        rbac.read_cluster_role_binding("backdoor-admin")
    assert err.value.status == 404
    assert rbac.read_cluster_role_binding("cordon-sandbox-neighbour").role_ref.name == "view"
    assert ("DELETE", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/backdoor-admin?dryRun=All") \
        in k8s.standin.requests
    kinds = [r.kind for r in responder.ledger.records(case_id=s["case_id"])]
    assert "action.contained" in kinds and "verify.held" in kinds
    assert responder.ledger.verify().ok


def test_system_principal_binding_is_not_contained(responder, k8s, tmp_path):
    event = panther_event("System principal creating binding (excluded)")
    event["objectRef"]["apiGroup"] = "rbac.authorization.k8s.io"
    report = responder.intake([write(tmp_path, event)])
    summaries = list(responder.run_all(report, approval="auto", stand_ins=k8s))
    assert all(s["status"] != "contained" for s in summaries), summaries
    assert k8s.standin.get("clusterrolebindings", "", "system-binding") is None
    assert not [r for r in k8s.standin.requests if r[0] == "DELETE"]


def _ctx(k8s, binding: str):
    from cordon.providers.kubernetes.clients import kubernetes_clients

    return ActionContext(detection=None, params={"binding": binding}, clients=kubernetes_clients(k8s.cloud_params()))


def test_uid_precondition_refuses_a_recreated_binding_and_rollback_recreates(k8s):
    k8s.standin.put("clusterrolebindings", "", {"metadata": {"name": "evil"}, "roleRef": {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "User", "name": "mallory"}]})
    action = get_action("kubernetes.delete-role-binding")()
    ctx = _ctx(k8s, "clusterrolebindings/evil")
    plan = action.plan(ctx)
    assert plan.status == "planned" and plan.data == {"server_dry_run": "accepted"}
    assert k8s.standin.get("clusterrolebindings", "", "evil") is not None  # the dry run deleted nothing
    # deleted and re-created under the same name by someone else: a new uid
    old_uid = plan.before["uid"]
    k8s.standin.objects.pop(("clusterrolebindings", "", "evil"))
    k8s.standin.put("clusterrolebindings", "", {"metadata": {"name": "evil"}, "roleRef": {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"}, "subjects": []})
    with pytest.raises(ApiException) as err:
        action.call(ctx, plan.calls[0])
    assert err.value.status == 409 and "Precondition failed" in err.value.body
    assert k8s.standin.get("clusterrolebindings", "", "evil")["metadata"]["uid"] != old_uid
    # the run plans afresh: the approved plan's calls no longer match
    approved = [c.model_dump(exclude_none=True) for c in plan.calls]
    assert action.run(ctx, approved=approved).status == "plan_changed"
    assert k8s.standin.get("clusterrolebindings", "", "evil") is not None
    done = action.run(ctx)
    assert done.status == "contained" and k8s.standin.get("clusterrolebindings", "", "evil") is None
    assert action.verify(ctx) == (True, None)
    back = action.rollback(ctx, done)
    assert back.status == "rolled_back", back.error
    again = k8s.standin.get("clusterrolebindings", "", "evil")
    assert again["roleRef"]["name"] == "cluster-admin" and again["metadata"]["uid"] != done.before["uid"]


def test_namespaced_rolebinding_and_guard_refuses_system_bindings(k8s):
    k8s.standin.put("rolebindings", "team-a", {"metadata": {"name": "ns-admin"}, "roleRef": {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "User", "name": "bob"}]})
    action = get_action("kubernetes.delete-role-binding")()
    done = action.run(_ctx(k8s, "namespaces/team-a/rolebindings/ns-admin"))
    assert done.status == "contained" and done.calls[0].operation == "delete_namespaced_role_binding"
    assert k8s.standin.get("rolebindings", "team-a", "ns-admin") is None
    refused = action.run(_ctx(k8s, "clusterrolebindings/system:node"))
    assert refused.status == "refused" and "system:" in refused.error


def test_permissions_kubernetes_prints_the_cluster_role_from_declared_verbs():
    from typer.testing import CliRunner

    from cordon.cli import app

    out = CliRunner().invoke(app, ["permissions", "kubernetes"])
    assert out.exit_code == 0, out.output
    role = yaml.safe_load(out.stdout)
    assert role["kind"] == "ClusterRole" and role["metadata"]["name"] == "cordon-responder"
    rules = {(r["apiGroups"][0], r["resources"][0]): r["verbs"] for r in role["rules"]}
    assert rules == {("rbac.authorization.k8s.io", "clusterrolebindings"): ["create", "delete", "get", "list"],
                     ("rbac.authorization.k8s.io", "rolebindings"): ["create", "delete", "get", "list"],
                     ("rbac.authorization.k8s.io", "clusterroles"): ["bind"],
                     ("rbac.authorization.k8s.io", "roles"): ["bind"],
                     ("", "secrets"): ["delete", "get"],
                     ("", "pods"): ["delete", "get"],
                     ("", "serviceaccounts"): ["create", "delete", "get"],
                     ("certificates.k8s.io", "certificatesigningrequests"): ["get"],
                     # a subresource keeps its slash: the API group is split off at the first one
                     ("certificates.k8s.io", "certificatesigningrequests/approval"): ["update"],
                     ("certificates.k8s.io", "signers"): ["approve"]}


def test_config_section_reaches_a_cluster_through_a_kubeconfig(k8s, tmp_path):
    """``cordon.yaml``'s ``kubernetes:`` section (kubeconfig + context) is checked, and the
    provider's clients load that kubeconfig and read from the cluster it names (the stand-in)."""
    from cordon.config import load_config
    from cordon.providers import get_provider
    from cordon.providers.kubernetes.config import KubernetesConfigError, kubernetes_section

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "other",
        "clusters": [{"name": "sb", "cluster": {"server": k8s.url}}],
        "users": [{"name": "cordon", "user": {"token": k8s.standin.token}}],
        "contexts": [{"name": "sandbox", "context": {"cluster": "sb", "user": "cordon"}},
                     {"name": "other", "context": {"cluster": "sb", "user": "nobody"}}]}))
    (tmp_path / "cordon.yaml").write_text(yaml.safe_dump({"kubernetes": {
        "kubeconfig": str(kubeconfig), "context": "sandbox", "service_account": "system:serviceaccount:ir:cordon"}}))
    config = load_config(tmp_path)
    provider = get_provider("kubernetes")
    assert provider.check_config(config) == "Kubernetes context sandbox"
    k8s.standin.put("clusterrolebindings", "", {"metadata": {"name": "seen"}, "roleRef": {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"}})
    clients = provider.clients(kubernetes_section(config.raw))
    assert clients("rbac").read_cluster_role_binding("seen").role_ref.name == "view"
    assert clients.own_identity() == "system:serviceaccount:ir:cordon"
    with pytest.raises(KubernetesConfigError, match=r"kubernetes\.contxt: unknown field"):
        kubernetes_section({"kubernetes": {"contxt": "x"}})
    with pytest.raises(KubernetesConfigError, match=r"kubernetes\.in_cluster"):
        kubernetes_section({"kubernetes": {"in_cluster": True, "context": "x"}})


def test_provider_guard_refuses_system_kube_system_and_cordons_own_service_account(tmp_path, monkeypatch):
    """The provider's guard, on detections read from real Events: a binding whose subject is a
    system: group, one in kube-system and one naming Cordon's own ServiceAccount are refused; the
    attacker's binding is allowed."""
    from cordon.providers import get_provider

    guard_of = get_provider("kubernetes").guard
    me = "system:serviceaccount:cordon:cordon-responder"
    base = panther_event("EKS ClusterRoleBinding to cluster-admin")

    from types import SimpleNamespace

    from cordon.providers.kubernetes.detections import detections_from_k8s_audit

    match = SimpleNamespace(id="r", title="t", path=None, level="high", technique_ids=[])

    def detection(subjects, namespace=None):
        event = json.loads(json.dumps(base))
        event["requestObject"]["subjects"] = subjects
        if namespace:
            event["objectRef"].update(resource="rolebindings", namespace=namespace)
        (det,) = detections_from_k8s_audit(event, match, "audit.jsonl", 0)
        return det

    attacker = base["requestObject"]["subjects"]
    assert guard_of(detection(attacker), None, me) is None
    assert "system:" in guard_of(detection([{"kind": "Group", "name": "system:masters"}]), None, me)
    assert "act_in_kube_system" in guard_of(detection(attacker, namespace="kube-system"), None, me)
    # the configuration switch lets Cordon act on an attacker's object in kube-system, never on a
    # system: subject there
    (tmp_path / "cordon.yaml").write_text("kubernetes:\n  act_in_kube_system: true\n")
    monkeypatch.setenv("CORDON_CONFIG", str(tmp_path))
    assert guard_of(detection(attacker, namespace="kube-system"), None, me) is None
    assert "system:" in guard_of(detection([{"kind": "ServiceAccount", "name": "replicaset-controller",
                                             "namespace": "kube-system"}], namespace="kube-system"), None, me)
    monkeypatch.delenv("CORDON_CONFIG")
    assert "Cordon's own" in guard_of(detection([{"kind": "ServiceAccount", "name": "cordon-responder",
                                                  "namespace": "cordon"}]), None, me)


def test_an_eks_token_is_a_presigned_get_caller_identity_naming_the_cluster():
    """The EKS bearer token Cordon mints (what ``aws eks get-token`` prints): ``k8s-aws-v1.`` and the
    unpadded base64url of an STS GetCallerIdentity URL presigned for 60 s with ``x-k8s-aws-id``
    signed in (the header aws-iam-authenticator reads the cluster from). Nothing is sent to AWS."""
    import base64
    from urllib.parse import parse_qs, urlsplit

    import boto3

    from cordon.providers.kubernetes.tokens import eks_token

    session = boto3.Session(aws_access_key_id="AKIAEXAMPLECORDON001", aws_secret_access_key="x" * 40,
                            region_name="eu-west-1")
    token = eks_token("prod-1", "eu-west-1", session=session)
    assert token.startswith("k8s-aws-v1.") and "=" not in token
    body = token[len("k8s-aws-v1."):]
    url = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
    query = parse_qs(urlsplit(url).query)
    assert query["Action"] == ["GetCallerIdentity"] and query["X-Amz-Expires"] == ["60"]
    assert "x-k8s-aws-id" in query["X-Amz-SignedHeaders"][0].split(";")
    assert query["X-Amz-Credential"][0].startswith("AKIAEXAMPLECORDON001/")
    assert urlsplit(url).netloc == "sts.eu-west-1.amazonaws.com"
    assert query["X-Amz-Signature"][0] and len(query["X-Amz-Signature"][0]) == 64


def test_one_entry_per_cluster_and_a_cluster_not_listed_is_refused(k8s, tmp_path, monkeypatch):
    """``kubernetes.clusters``: a detection's cluster is reached through its own entry (here the
    stand-in by host and token through a kubeconfig), the refresh hook mints EKS tokens for an
    ``eks_cluster`` entry, and a cluster not listed is refused by name, never answered through
    another cluster's credentials."""
    from cordon.providers import get_provider
    from cordon.providers.kubernetes.config import KubernetesConfigError, cluster_entry, kubernetes_section

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sandbox",
        "clusters": [{"name": "sb", "cluster": {"server": k8s.url}}],
        "users": [{"name": "cordon", "user": {"token": k8s.standin.token}}],
        "contexts": [{"name": "sandbox", "context": {"cluster": "sb", "user": "cordon"}}]}))
    (tmp_path / "cordon.yaml").write_text(yaml.safe_dump({"kubernetes": {
        "service_account": "system:serviceaccount:ir:cordon", "clusters": {
            "gke-1": {"kubeconfig": str(kubeconfig)},
            "prod-1": {"host": "https://eks.invalid", "eks_cluster": "prod-1", "region": "eu-west-1"}}}}))
    monkeypatch.setenv("CORDON_CONFIG", str(tmp_path))
    provider = get_provider("kubernetes")
    k8s.standin.put("clusterrolebindings", "", {"metadata": {"name": "seen"}, "roleRef": {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"}})
    clients = provider.clients({"account_id": "gke-1"})
    assert clients("rbac").read_cluster_role_binding("seen").role_ref.name == "view"
    assert clients.own_identity() == "system:serviceaccount:ir:cordon"
    eks = provider.clients({"account_id": "prod-1"})
    hook = eks("api").configuration.refresh_api_key_hook
    assert hook is not None
    with pytest.raises(KubernetesConfigError, match=r"kubernetes\.clusters\.aks-9: not configured"):
        provider.clients({"account_id": "aks-9"})
    section = {"clusters": {"a": {"gke": True}}}
    with pytest.raises(KubernetesConfigError, match=r"kubernetes\.clusters\.a\.host: required"):
        kubernetes_section({"kubernetes": section})
    assert cluster_entry({"context": "x", "clusters": {"a": {"context": "y"}}}, None) == {"context": "x"}


def test_the_approval_message_says_what_each_step_does_not_do():
    """The Slack request lists, under each step, what its action leaves undone (``Action.does_not``):
    removing a binding revokes no credential; an issued certificate cannot be revoked."""
    from types import SimpleNamespace

    from cordon.providers.kubernetes.detections import detections_from_k8s_audit
    from cordon.slack.blocks import approval_blocks

    match = SimpleNamespace(id="r", title="t", path=None, level="high", technique_ids=[])
    (det,) = detections_from_k8s_audit(panther_event("EKS ClusterRoleBinding to cluster-admin"), match, "a", 0)
    plan = [{"action": "kubernetes.delete-role-binding", "target": det.credential.uid,
             "calls": ["rbac.delete_cluster_role_binding(name=backdoor-admin)"]},
            {"action": "kubernetes.deny-csr", "target": "certificatesigningrequests/x", "calls": ["..."]}]
    text = json.dumps(approval_blocks("case-1", "kubernetes-cluster-admin-binding", det.summary(), {}, plan,
                                      "h" * 64, "run-1", None))
    assert "Does not revoke a credential: tokens, client certificates" in text
    assert "Does not revoke a certificate already issued (Kubernetes cannot)" in text
