"""Kubernetes containment beyond bindings, end to end: real audit Events (Panther's test events,
../shared/data/real) -> Sigma -> case -> the respond flow (real Prefect) -> the official
``kubernetes`` client over real HTTP to the stand-in (cordon/sandbox/kubernetes.py):

* a client-certificate CSR is denied through its approval subresource; an approved one is left to
  a person with what to do (no revocation exists; system:masters needs the CA replaced);
* a long-lived ServiceAccount token Secret is deleted, its value never reaching the ledger, while an
  Opaque Secret is left alone with the reason;
* a new ServiceAccount loses its bindings, then itself; a binding shared with another subject is
  refused; rollback creates both again.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from cordon.action import ActionContext, get_action
from cordon.providers.kubernetes.clients import kubernetes_clients
from tests.conftest import SHARED_DATA, panther_k8s_event
from tests.responder_fixtures import *  # noqa: F401,F403 - the responder fixture

PANTHER = SHARED_DATA / "panther-analysis" / "rules" / "kubernetes_rules"
pytestmark = pytest.mark.skipif(not PANTHER.is_dir(), reason=f"{PANTHER} is absent")


def write(tmp_path: Path, *events: dict) -> Path:
    path = tmp_path / "audit.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def ctx(k8s, **params) -> ActionContext:
    return ActionContext(detection=None, params=params, clients=kubernetes_clients(k8s.cloud_params()))


def pkcs10(cn: str, orgs: list[str]) -> str:
    """A real PKCS#10 request for CN=cn, O=orgs, base64 of its PEM as ``spec.request`` holds it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.NameAttribute(NameOID.COMMON_NAME, cn)] + [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o)
                                                             for o in orgs]
    req = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(names)).sign(key, hashes.SHA256())
    return base64.b64encode(req.public_bytes(Encoding.PEM)).decode()


def test_client_certificate_csr_is_denied_exactly_and_verified(responder, k8s, tmp_path):
    event = panther_k8s_event("k8s_client_certificate_created.yml", "EKS client certificate CSR created")
    k8s.standin.put("certificatesigningrequests", "", {"metadata": {"name": "build-agent"}, "spec": {
        "signerName": "kubernetes.io/kube-apiserver-client", "usages": ["client auth"], "request": ""}, "status": {}})
    report = responder.intake([write(tmp_path, event)])
    assert len(report.cases) == 1
    (s,) = list(responder.run_all(report, approval="auto", stand_ins=k8s))
    assert s["playbook"] == "kubernetes-client-certificate", s
    assert s["status"] == "contained" and s["verified"] is True, s
    assert s["enrichment"]["kubernetes.describe-actor"]["actor"]["kind"] == "person"
    (action,) = s["actions"]
    assert action["name"] == "kubernetes.deny-csr" and action["before"]["decision"] is None
    assert action["after"]["decision"] == "Denied"
    (call,) = action["calls"]
    assert call["operation"] == "replace_certificate_signing_request_approval"
    assert call["params"]["body"]["metadata"]["uid"] == action["before"]["uid"]
    csr = k8s.standin.get("certificatesigningrequests", "", "malicious-csr")
    assert [c["type"] for c in csr["status"]["conditions"]] == ["Denied"]
    assert "conditions" not in k8s.standin.get("certificatesigningrequests", "", "build-agent")["status"]
    puts = [p for m, p in k8s.standin.requests if m == "PUT"]
    assert puts == ["/apis/certificates.k8s.io/v1/certificatesigningrequests/malicious-csr/approval?dryRun=All",
                    "/apis/certificates.k8s.io/v1/certificatesigningrequests/malicious-csr/approval"], puts
    assert responder.ledger.verify().ok


def test_an_approved_system_masters_certificate_is_left_to_a_person_with_what_to_do(k8s):
    k8s.standin.put("certificatesigningrequests", "", {"metadata": {"name": "mallory"}, "spec": {
        "signerName": "kubernetes.io/kube-apiserver-client", "usages": ["client auth"], "username": "eve",
        "request": pkcs10("mallory", ["system:masters"])},
        "status": {"conditions": [{"type": "Approved", "status": "True"}], "certificate": "LS0t"}})
    action = get_action("kubernetes.deny-csr")()
    result = action.run(ctx(k8s, csr="certificatesigningrequests/mallory"))
    assert result.status == "refused", result
    for said in ("cannot be revoked", "user 'mallory'", "system:masters", "az aks rotate-certs",
                 "--start-credential-rotation", "EKS cannot rotate"):
        assert said in result.error, (said, result.error)
    assert not [r for r in k8s.standin.requests if r[0] == "PUT"]
    # an approved request outside system:masters: the bindings, no CA rotation
    k8s.standin.put("certificatesigningrequests", "", {"metadata": {"name": "ci"}, "spec": {
        "signerName": "kubernetes.io/kube-apiserver-client", "request": pkcs10("ci-bot", ["dev"])},
        "status": {"conditions": [{"type": "Approved", "status": "True"}]}})
    other = action.run(ctx(k8s, csr="certificatesigningrequests/ci/approval"))
    assert other.status == "refused" and "user 'ci-bot' and groups ['dev']" in other.error
    assert "rotate" not in other.error


def test_token_secret_is_deleted_and_its_value_never_reaches_the_ledger(responder, k8s, tmp_path):
    base = panther_k8s_event("k8s_serviceaccount_token_created.yml", "EKS long-lived token created")
    value = base64.b64encode(b"eyJhbGciOiJSUzI1NiJ9.not-a-real-token-but-a-secret").decode()
    # logged at Request level (audit policies should not, some do): the values reach intake
    event = {**base, "objectRef": {"resource": "secrets", "namespace": "production", "name": "persist-token",
                                   "apiVersion": "v1"},
             "requestObject": {"kind": "Secret", "apiVersion": "v1", "metadata": {"name": "persist-token"},
                               "type": "kubernetes.io/service-account-token", "data": {"ca.crt": value}}}
    opaque = {**base, "objectRef": {"resource": "secrets", "namespace": "production", "name": "app-config",
                                    "apiVersion": "v1"}}
    k8s.standin.put("secrets", "production", {"metadata": {"name": "persist-token", "annotations": {
        "kubernetes.io/service-account.name": "persistence-sa",
        "kubectl.kubernetes.io/last-applied-configuration": json.dumps({"data": {"token": value}})}},
        "type": "kubernetes.io/service-account-token", "data": {"token": value}})
    k8s.standin.put("secrets", "production", {"metadata": {"name": "app-config"}, "type": "Opaque",
                                              "data": {"password": value}})
    report = responder.intake([write(tmp_path, event, opaque)])
    assert len(report.cases) == 2
    summaries = list(responder.run_all(report, approval="auto", stand_ins=k8s))
    (token,) = [s for s in summaries if s["actions"]]
    (left,) = [s for s in summaries if not s["actions"]]
    assert token["playbook"] == "kubernetes-token-secret" and token["status"] == "contained", token
    assert token["verified"] is True
    assert token["actions"][0]["before"]["service_account"] == "persistence-sa"
    assert k8s.standin.get("secrets", "production", "persist-token") is None
    assert left["status"] == "refused" and "holds no ServiceAccount token" in json.dumps(left)
    assert k8s.standin.get("secrets", "production", "app-config") is not None
    assert value not in json.dumps([c.detection.model_dump(mode="json") for c in report.cases])
    dump = json.dumps([r.payload for r in responder.ledger.records()])
    assert "persist-token" in dump
    assert value not in dump and "not-a-real-token" not in dump
    assert responder.ledger.verify().ok


def test_new_service_account_loses_its_bindings_then_itself_and_rollback_restores(responder, k8s, tmp_path):
    event = panther_k8s_event("k8s_serviceaccount_token_created.yml", "Service account creation (not token)")
    k8s.standin.put("serviceaccounts", "production", {"metadata": {"name": "new-sa"}})
    k8s.standin.put("clusterrolebindings", "", {"metadata": {"name": "new-sa-admin"}, "roleRef": {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "new-sa", "namespace": "production"}]})
    k8s.standin.put("rolebindings", "production", {"metadata": {"name": "new-sa-edit"}, "roleRef": {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"kind": "ServiceAccount", "name": "new-sa"}]})  # no namespace: the binding's own
    k8s.standin.put("rolebindings", "staging", {"metadata": {"name": "same-name-elsewhere"}, "roleRef": {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"kind": "ServiceAccount", "name": "new-sa"}]})  # staging's new-sa: another account
    report = responder.intake([write(tmp_path, event)])
    (s,) = list(responder.run_all(report, approval="auto", stand_ins=k8s))
    assert s["playbook"] == "kubernetes-service-account" and s["status"] == "contained", s
    assert s["verified"] is True
    (action,) = s["actions"]
    assert [c["operation"] for c in action["calls"]] == [
        "delete_cluster_role_binding", "delete_namespaced_role_binding", "delete_namespaced_service_account"]
    assert all(c["params"]["precondition_uid"] for c in action["calls"])
    assert k8s.standin.get("serviceaccounts", "production", "new-sa") is None
    assert k8s.standin.get("clusterrolebindings", "", "new-sa-admin") is None
    assert k8s.standin.get("rolebindings", "production", "new-sa-edit") is None
    assert k8s.standin.get("rolebindings", "staging", "same-name-elsewhere") is not None
    assert k8s.standin.get("clusterrolebindings", "", "cordon-sandbox-neighbour") is not None
    # rollback (from the ledger) creates the ServiceAccount and both bindings again (new uids)
    (back,) = responder.rollback(s["case_id"], kubernetes_clients(k8s.cloud_params()), "cli:alice")
    assert back["status"] == "rolled_back", back
    assert k8s.standin.get("serviceaccounts", "production", "new-sa")["metadata"]["uid"] != action["before"]["uid"]
    assert k8s.standin.get("clusterrolebindings", "", "new-sa-admin")["roleRef"]["name"] == "cluster-admin"
    assert k8s.standin.get("rolebindings", "production", "new-sa-edit") is not None


def test_a_binding_shared_with_another_subject_is_refused_and_nothing_is_deleted(k8s):
    k8s.standin.put("serviceaccounts", "production", {"metadata": {"name": "new-sa"}})
    k8s.standin.put("clusterrolebindings", "", {"metadata": {"name": "shared"}, "roleRef": {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "ServiceAccount", "name": "new-sa", "namespace": "production"},
                     {"kind": "User", "name": "alice@example.com"}]})
    result = get_action("kubernetes.delete-service-account")().run(
        ctx(k8s, service_account="namespaces/production/serviceaccounts/new-sa"))
    assert result.status == "refused" and "alice@example.com" in result.error, result
    assert not [r for r in k8s.standin.requests if r[0] == "DELETE"]


def test_guard_refuses_cordons_own_service_account():
    from cordon.detections.model import Credential, Detection
    from cordon.providers import get_provider

    det = Detection.model_construct(credential=Credential(kind="k8s_service_account",
                                                          uid="namespaces/cordon/serviceaccounts/cordon-responder"))
    why = get_provider("kubernetes").guard(det, None, "system:serviceaccount:cordon:cordon-responder")
    assert why and "Cordon's own ServiceAccount" in why
    other = Detection.model_construct(credential=Credential(kind="k8s_service_account",
                                                            uid="namespaces/cordon/serviceaccounts/intruder"))
    assert get_provider("kubernetes").guard(other, None, "system:serviceaccount:cordon:cordon-responder") is None


def token_request(bound: dict | None) -> dict:
    """Panther's token-request Event as the RequestResponse audit level records it: the
    TokenRequest's spec (bound to ``bound``) and the issued token in the response."""
    event = panther_k8s_event("k8s_serviceaccount_token_created.yml", "EKS long-lived token created")
    spec = {"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": 3600}
    if bound:
        spec["boundObjectRef"] = bound
    event["requestObject"] = {"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1", "spec": spec}
    event["responseObject"] = {"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1", "spec": spec,
                               "status": {"token": "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJwZXJzaXN0ZW5jZSJ9.c2lnbmF0dXJl",
                                          "expirationTimestamp": "2026-12-05T11:00:00Z"}}
    return event


def test_a_token_bound_to_a_pod_dies_with_exactly_that_pod(responder, k8s, tmp_path):
    pod = k8s.standin.put("pods", "production", {"metadata": {"name": "debug-shell"}, "spec": {
        "serviceAccountName": "persistence-sa", "containers": [{"name": "sh", "image": "busybox"}]}})
    k8s.standin.put("pods", "production", {"metadata": {"name": "web-1"}, "spec": {
        "containers": [{"name": "web", "image": "nginx"}]}})
    event = token_request({"kind": "Pod", "apiVersion": "v1", "name": "debug-shell", "uid": pod["metadata"]["uid"]})
    report = responder.intake([write(tmp_path, event)])
    (s,) = list(responder.run_all(report, approval="auto", stand_ins=k8s))
    assert s["playbook"] == "kubernetes-token-request" and s["status"] == "contained", s
    assert s["verified"] is True
    (call,) = s["actions"][0]["calls"]
    assert (call["service"], call["operation"]) == ("core", "delete_namespaced_pod")
    assert call["params"] == {"name": "debug-shell", "namespace": "production",
                              "precondition_uid": pod["metadata"]["uid"]}
    assert k8s.standin.get("pods", "production", "debug-shell") is None
    assert k8s.standin.get("pods", "production", "web-1") is not None
    dump = json.dumps([r.payload for r in responder.ledger.records()])
    assert "c2lnbmF0dXJl" not in dump and "expirationSeconds" in dump


def test_a_pod_recreated_under_the_bound_name_is_never_touched(k8s):
    k8s.standin.put("pods", "production", {"metadata": {"name": "debug-shell"}, "spec": {
        "containers": [{"name": "sh", "image": "busybox"}]}})
    from cordon.detections.model import Credential, Detection

    det = Detection.model_construct(credential=Credential(
        kind="k8s_sa_token", uid="namespaces/production/serviceaccounts/persistence-sa/token",
        attributes={"boundObjectRef": {"kind": "Pod", "name": "debug-shell", "uid": "the-old-pods-uid"}}))
    action = get_action("kubernetes.delete-token-bound-object")()
    c = ActionContext(detection=det, params={"token_request": det.credential.uid},
                      clients=kubernetes_clients(k8s.cloud_params()))
    result = action.run(c)
    assert result.status == "already_contained", result
    assert k8s.standin.get("pods", "production", "debug-shell") is not None
    assert not [r for r in k8s.standin.requests if r[0] == "DELETE"]


def test_an_unbound_token_is_left_to_a_person_with_the_reason(responder, k8s, tmp_path):
    report = responder.intake([write(tmp_path, token_request(None))])
    (s,) = list(responder.run_all(report, approval="auto", stand_ins=k8s))
    assert s["status"] == "refused", s
    assert "bound to no object" in s["guard"]["reason"] and "3600 s" in s["guard"]["reason"]
    assert not [r for r in k8s.standin.requests if r[0] == "DELETE"]
