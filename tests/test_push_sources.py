"""Signed push (issue 15): ``/webhook/detections/{source}`` with each source's own credential,
over real HTTP to Cordon's server under uvicorn.

Pub/Sub push tokens are built here as Google builds them (an RS256 JWT with ``kid``, ``iss``
``https://accounts.google.com``, ``aud``, ``email``, ``email_verified``, ``iat``/``exp``;
https://cloud.google.com/pubsub/docs/authenticate-push-subscriptions), signed with a key of this
test whose certificate a local stand-in of Google's v1 certs endpoint publishes. The Pub/Sub push
body carries a real Cloud Audit Log entry (GoogleCloudPlatform/security-analytics fixture), read by
Cordon's real intake into a case."""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

from cordon.audit.ledger import Ledger
from cordon.config import ConfigError
from cordon.server import push_auth
from cordon.server.push_auth import GoogleKeys, PushSource, load_push_sources, verify
from tests.gcp_fixtures import real_audit_entry
from tests.test_server import SECRET, Decider, serve

SA = "pubsub-push@cordon-test.iam.gserviceaccount.com"
AUDIENCE = "https://cordon.example.com/webhook/detections/gcp-audit"


def _key_and_cert(cn: str) -> tuple[bytes, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return pem, cert.public_bytes(serialization.Encoding.PEM).decode()


class CertsEndpoint:
    """Google's ``/oauth2/v1/certs`` stand-in: ``{kid: PEM certificate}`` with Cache-Control, counting GETs."""

    def __init__(self, certs: dict[str, str]):
        self.certs = certs
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                outer.hits += 1
                body = json.dumps(outer.certs).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "public, max-age=3600")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/oauth2/v1/certs"


@pytest.fixture(scope="module")
def google():
    """Google's signing key (``kid`` ``k1``) published at a local certs endpoint, and a key of nobody's."""
    pem, cert = _key_and_cert("google")
    forged_pem, _ = _key_and_cert("mallory")
    endpoint = CertsEndpoint({"k1": cert})
    yield {"signer": crypt.RSASigner.from_string(pem, key_id="k1"),
           "forger": crypt.RSASigner.from_string(forged_pem, key_id="k1"), "endpoint": endpoint}
    endpoint.server.shutdown()


def token(signer, **over) -> str:
    now = int(time.time())
    claims = {"iss": "https://accounts.google.com", "aud": AUDIENCE, "email": SA, "email_verified": True,
              "sub": "1234567890", "iat": now, "exp": now + 3600, **over}
    return jwt.encode(signer, claims).decode()


def pubsub_source(google) -> PushSource:
    return PushSource(name="gcp-audit", kind="pubsub_oidc", audience=AUDIENCE, service_account=SA,
                      certs_url=google["endpoint"].url)


def push_body(entry: dict) -> bytes:
    """A Pub/Sub push request body (https://cloud.google.com/pubsub/docs/push#receive_push)."""
    data = base64.b64encode(json.dumps(entry).encode()).decode()
    return json.dumps({"message": {"data": data, "messageId": "9001", "publishTime": "2024-05-01T10:00:00Z",
                                   "attributes": {"logging.googleapis.com/timestamp": "2024-05-01T10:00:00Z"}},
                       "subscription": "projects/cordon-test/subscriptions/cordon-audit"}).encode()


def bearer(value: str) -> dict[str, str]:
    return {"authorization": f"Bearer {value}"}


def test_a_pubsub_token_verifies_only_when_google_signed_it_for_this_audience_and_sender(google):
    keys = GoogleKeys()
    src = pubsub_source(google)
    good = verify(src, bearer(token(google["signer"])), keys)
    assert good.ok and good.who == f"source:gcp-audit {SA}"
    cases = {
        "forged": (token(google["forger"]), "invalid_token"),
        "expired": (token(google["signer"], iat=int(time.time()) - 7200, exp=int(time.time()) - 3600),
                    "invalid_token"),
        "other audience": (token(google["signer"], aud="https://elsewhere.example.com/push"), "wrong_audience"),
        "other issuer": (token(google["signer"], iss="https://evil.example.com"), "wrong_issuer"),
        "other sender": (token(google["signer"], email="eve@evil.iam.gserviceaccount.com"), "wrong_sender"),
        "unverified email": (token(google["signer"], email_verified=False), "wrong_sender"),
        "garbage": ("not.a.jwt", "invalid_token"),
    }
    for what, (tok, reason) in cases.items():
        v = verify(src, bearer(tok), keys)
        assert (v.ok, v.reason) == (False, reason), what
    assert verify(src, {}, keys).reason == "missing_credential"


def test_google_keys_are_fetched_once_and_again_only_for_an_unknown_kid_not_more_than_once_a_minute(google):
    clock = [1000.0]
    keys = GoogleKeys(clock=lambda: clock[0])
    ep = google["endpoint"]
    before = ep.hits
    src = pubsub_source(google)
    for _ in range(5):
        assert verify(src, bearer(token(google["signer"])), keys).ok
    assert ep.hits - before == 1  # cached for max-age
    stranger = crypt.RSASigner.from_string(_key_and_cert("x")[0], key_id="k9")
    assert verify(src, bearer(token(stranger)), keys).reason == "invalid_token"
    assert ep.hits - before == 1  # fetched less than a minute ago: an unknown kid does not refetch
    clock[0] += 61
    for _ in range(3):  # a kid Google never published: one early refetch, then none within the minute
        assert verify(src, bearer(token(stranger)), keys).reason == "invalid_token"
    assert ep.hits - before == 2
    clock[0] += 61
    verify(src, bearer(token(stranger)), keys)
    assert ep.hits - before == 3
    clock[0] += 3600  # max-age passed: fetched again
    assert verify(src, bearer(token(google["signer"])), keys).ok
    assert ep.hits - before == 4


def test_shared_secret_kinds_and_revocation():
    env = {"KEY": "k-0123456789abcdef", "PASS": "p-secret", "TOK": "t-secret"}
    sources = load_push_sources({
        "guardduty": {"kind": "api_key", "header": "X-Cordon-Key", "secret_env": "KEY"},
        "securityhub": {"kind": "basic", "username": "eventbridge", "secret_env": "PASS"},
        "legacy": {"kind": "bearer", "secret_env": "TOK"},
        "gone": {"kind": "bearer", "secret_env": "UNSET", "revoked": True},
    }, env)
    assert verify(sources["guardduty"], {"x-cordon-key": env["KEY"]}).ok
    assert verify(sources["guardduty"], {"x-cordon-key": "k-wrong"}).reason == "wrong_credential"
    assert verify(sources["guardduty"], bearer(env["KEY"])).reason == "missing_credential"
    basic = "Basic " + base64.b64encode(b"eventbridge:p-secret").decode()
    assert verify(sources["securityhub"], {"authorization": basic}).ok
    wrong_user = "Basic " + base64.b64encode(b"someone:p-secret").decode()
    assert verify(sources["securityhub"], {"authorization": wrong_user}).reason == "wrong_credential"
    assert verify(sources["securityhub"], {"authorization": "Basic !!!"}).reason == "wrong_credential"
    assert verify(sources["legacy"], bearer(env["TOK"])).ok
    assert verify(sources["legacy"], bearer(env["PASS"])).reason == "wrong_credential"
    assert verify(sources["gone"], bearer("anything")).reason == "revoked"


def test_a_source_without_its_secret_or_with_a_bad_kind_is_a_config_error():
    with pytest.raises(ConfigError, match=r"webhook.sources.eb.secret_env': environment variable EB_KEY"):
        load_push_sources({"eb": {"kind": "api_key", "header": "x-k", "secret_env": "EB_KEY"}}, {})
    with pytest.raises(ConfigError, match=r"webhook.sources.eb.kind"):
        load_push_sources({"eb": {"kind": "hmac", "secret_env": "EB_KEY"}}, {"EB_KEY": "x"})
    with pytest.raises(ConfigError, match=r"webhook.sources.ps.audience"):
        load_push_sources({"ps": {"kind": "pubsub_oidc", "service_account": SA}}, {})


def test_cordon_yaml_accepts_webhook_sources_and_refuses_a_misspelt_key(tmp_path):
    from cordon.config import load_config

    (tmp_path / "cordon.yaml").write_text("webhook:\n  sources:\n    gcp-audit:\n      kind: pubsub_oidc\n"
                                          f"      audience: {AUDIENCE}\n      service_account: {SA}\n")
    cfg = load_config(tmp_path)
    assert load_push_sources(cfg.raw["webhook"]["sources"], {})["gcp-audit"].service_account == SA
    (tmp_path / "cordon.yaml").write_text("webhook:\n  sources:\n    gcp-audit:\n      kind: pubsub_oidc\n"
                                          "      audiance: x\n")
    with pytest.raises(ConfigError, match="audiance"):
        load_config(tmp_path)


def test_pubsub_push_reaches_the_intake_and_refusals_are_counted_per_source(google, tmp_path, monkeypatch):
    from cordon.audit.refusals import RefusalCounter
    from cordon.engine import Responder
    from cordon.server import create_app

    monkeypatch.setattr(push_auth, "GOOGLE_KEYS", GoogleKeys())
    ledger = Ledger(f"sqlite:///{tmp_path}/l.db")
    responder = Responder(ledger=ledger)
    seen: list[str] = []

    def on_detections(body: bytes, origin: str) -> dict:
        seen.append(origin)
        report = responder.intake_bytes(body, origin)
        return {"cases": [t.case_id for t in report.cases], "rejected": [r.message() for r in report.rejected]}

    counter = RefusalCounter(ledger)
    sources = {"gcp-audit": pubsub_source(google),
               "old": PushSource(name="old", kind="bearer", secret="t", revoked=True)}
    app = create_app(signing_secret=SECRET, ledger=ledger, decide=Decider(), on_detections=on_detections,
                     push_sources=sources, refusals=counter)
    entry = real_audit_entry("google.iam.admin.v1.SetIamPolicy-tokenCreator")
    with serve(app) as url:
        r = httpx.post(f"{url}/webhook/detections/gcp-audit", content=push_body(entry),
                       headers=bearer(token(google["signer"])))
        assert r.status_code == 202, r.text
        assert len(r.json()["cases"]) == 1 and r.json()["rejected"] == []
        assert seen == ["webhook:gcp-audit:127.0.0.1"]
        case = ledger.case(r.json()["cases"][0])
        assert case is not None and json.loads(case["detection"])["provider"] == "gcp"
        refused = [
            httpx.post(f"{url}/webhook/detections/gcp-audit", content=push_body(entry),
                       headers=bearer(token(google["forger"]))),
            httpx.post(f"{url}/webhook/detections/gcp-audit", content=push_body(entry),
                       headers=bearer(token(google["signer"], aud="https://elsewhere.example.com"))),
            httpx.post(f"{url}/webhook/detections/old", content=push_body(entry), headers=bearer("t")),
        ]
        assert [x.status_code for x in refused] == [401, 401, 401]
        assert httpx.post(f"{url}/webhook/detections/nobody", content=b"{}").status_code == 404
        # the static-token endpoint stays closed: no CORDON_WEBHOOK_TOKEN here
        assert httpx.post(f"{url}/webhook/detections", content=b"{}", headers=bearer("t")).status_code == 503
    assert seen == ["webhook:gcp-audit:127.0.0.1"]  # nothing refused reached the intake
    assert counter.counts("webhook") == {"invalid_token": 1, "wrong_audience": 1, "revoked": 1}
    sources_seen = sorted(s["sender"] for w in counter.windows("webhook") for s in w.samples)
    assert sources_seen == ["gcp-audit", "gcp-audit", "old"]
