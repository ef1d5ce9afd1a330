"""The Azure sandbox: local stand-ins for Microsoft Graph v1.0, Azure Resource Manager role
assignments and the Microsoft identity platform token endpoint.

:class:`AzureStandIn` runs **two** servers on 127.0.0.1 that share one state:

* ``graph_url`` (plain ``http``; kiota's token provider accepts http only for loopback hosts):
  Microsoft Graph v1.0 (https://learn.microsoft.com/graph/api/overview?view=graph-rest-1.0):

  - ``GET/PATCH /v1.0/servicePrincipals/{id}`` and ``/v1.0/applications/{id}`` (PATCH accepts
    ``accountEnabled`` (service principals), ``keyCredentials``, ``displayName``);
  - ``GET /v1.0/{servicePrincipals|applications}/{id}/owners``;
  - ``POST /v1.0/{servicePrincipals|applications}/{id}/removePassword`` (body ``{"keyId"}``; 204;
    an unknown keyId is 400 as in Graph) and ``.../addPassword`` (200 with ``secretText``;
    ``startDateTime`` / ``endDateTime`` as sent, else now and two years later, as Graph defaults them);
    every password and key credential carries ``startDateTime`` and ``endDateTime``, as in Graph
    (a certificate PATCHed without them starts now: the stand-in does not read its ``notBefore``);
  - ``GET /v1.0/applications/{id}/federatedIdentityCredentials`` and
    ``GET/DELETE .../federatedIdentityCredentials/{fid}``;
  - ``GET /v1.0/users/{id or userPrincipalName}`` (``$select`` honoured: only the named properties
    and ``id``, as Graph answers), ``PATCH`` (``accountEnabled`` only),
    ``POST /v1.0/users/{id}/revokeSignInSessions``
    (``{"value": true}``; records ``signInSessionsValidFromDateTime``);
  - the alternate keys ``/v1.0/applications(appId='...')`` and ``/v1.0/servicePrincipals(appId='...')``;
  - ``GET/POST /v1.0/servicePrincipals/{id}/appRoleAssignments`` (the list paged as Graph pages it:
    ``@odata.nextLink`` with a ``$skiptoken``, :attr:`AzureStandIn.page_size` a page; POST of an
    assignment that exists is 400 "Permission being assigned already exists on the object"),
    ``GET/DELETE .../{assignmentId}`` (204; ids are 43-character base64url strings as in Graph;
    Microsoft Graph's own service principal, :meth:`AzureStandIn.ensure_graph_resource`, carries
    the real ids of :data:`GRAPH_APP_ROLES`), ``GET .../oauth2PermissionGrants``;
  - ``GET /v1.0/{servicePrincipals|users}/{id}/memberOf`` (``directoryRole`` objects);
  - groups (:meth:`AzureStandIn.ensure_group`): ``GET /v1.0/groups/{id}``, ``GET .../members``,
    ``POST .../members/$ref`` (body ``{"@odata.id": ".../directoryObjects/{id}"}``; a member already
    there is 400 "One or more added object references already exist", an unknown object 404) and
    ``DELETE .../members/{id}/$ref`` (204; not a member: 404), and ``POST /v1.0/users/{id}/
    checkMemberGroups`` (``{"groupIds": [...]}`` -> ``{"value": [...]}``, the ones the user is a
    member of, directly or through nested groups (:meth:`AzureStandIn.add_group_member`), as Graph's
    transitive check: https://learn.microsoft.com/graph/api/directoryobject-checkmembergroups);
  - ``GET/POST /v1.0/roleManagement/directory/roleAssignments`` (``$filter`` on ``principalId``,
    ``roleDefinitionId``, ``directoryScopeId`` with ``eq`` / ``and``; any other filter is 400) and
    ``GET/DELETE .../roleAssignments/{id}`` (``unifiedRoleAssignment``);
  - ``GET /v1.0/auditLogs/signIns`` (``$filter`` ``servicePrincipalId`` / ``appId`` ``eq``, ``$top``);
  - ``GET /v1.0/auditLogs/directoryAudits`` (List directoryAudits,
    https://learn.microsoft.com/graph/api/directoryaudit-list?view=graph-rest-1.0) over the records a
    test adds (:meth:`AzureStandIn.add_directory_audits`, the Graph JSON as given): ``$filter`` of
    ``activityDateTime ge|gt|le|lt <time>`` clauses joined by ``and`` (any other clause is 400),
    newest first, ``$top`` (at most :attr:`AzureStandIn.page_size`) a page, ``@odata.nextLink`` with a
    ``$skiptoken``;
  - ``GET /beta/auditLogs/signIns`` (List signIns, beta: https://learn.microsoft.com/graph/api/signin-list?
    view=graph-rest-beta): the beta signIn shape (``signInEventTypes``, ``servicePrincipalCredentialKeyId``);
    ``$filter`` of clauses joined by ``and``: ``appId`` / ``servicePrincipalId`` / ``userId`` /
    ``ipAddress`` ``eq '...'``, ``createdDateTime ge|gt|le|lt <time>`` and
    ``signInEventTypes/any(t: t eq 'a' or t eq 'b')`` (without it, interactive user sign-ins only, as
    Graph answers); any other clause is 400. Newest first, ``$top`` (at most :attr:`AzureStandIn.page_size`)
    a page, ``@odata.nextLink`` with a ``$skiptoken`` for the next.

* ``arm_url`` (``https`` with a certificate for 127.0.0.1 issued by a ``trustme`` CA whose PEM is
  :attr:`AzureStandIn.ca_pem`; so azure-core's https rule stays on):

  - Azure RBAC role assignments, api-version 2022-04-01
    (https://learn.microsoft.com/rest/api/authorization/role-assignments):
    ``GET/PUT/DELETE /{scope}/providers/Microsoft.Authorization/roleAssignments/{name}`` (by full ID)
    and ``GET /{scope}/providers/Microsoft.Authorization/roleAssignments`` (list: assignments at,
    above and below the scope, as ARM's list without ``$filter=atScope()`` does; ``$filter=principalId
    eq '<guid>'`` is honoured, any other filter is 400);
  - the Activity Log, ``GET /subscriptions/{id}/providers/Microsoft.Insights/eventtypes/management/values``
    (Activity Logs - List, api-version 2015-04-01,
    https://learn.microsoft.com/rest/api/monitor/activity-logs/list) over the events a test adds
    (:meth:`AzureStandIn.add_activity_events`): ``$filter`` of ``eventTimestamp ge|le '<time>'``
    joined by ``and`` (at least one; anything else is 400), the subscription's events newest first,
    :attr:`AzureStandIn.page_size` a page, ``nextLink`` with a ``$skipToken``;
  - the token endpoint ``POST /{tenant}/oauth2/v2.0/token`` (client-credentials grant,
    https://learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow) and the
    OpenID configuration MSAL reads first, ``GET /{tenant}/v2.0/.well-known/openid-configuration``.
    azure-identity demands an ``https`` authority (``normalize_authority``), which is why the token
    endpoint lives on the TLS server; credentials need ``disable_instance_discovery=True``.

Every Graph and ARM request must carry ``Authorization: Bearer <token issued by the token
endpoint>`` for the right audience (Graph: ``https://graph.microsoft.com/.default``, ARM:
``https://management.azure.com/.default``), else 401. Errors use each API's JSON error shape
``{"error": {"code", "message"}}``.

Sandbox approximations: owners are stored as object IDs of users or service principals; a role
assignment PUT to an existing name with different properties is 409 ``RoleAssignmentExists``;
tokens never expire within a test; ``$filter`` and ``$select`` are ignored except
``$select=keyCredentials`` on a single application or service principal, which returns each
certificate's ``key`` (Graph returns ``key`` only then).
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import secrets
import ssl
import tempfile
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import trustme

from cordon.providers.azure.clients import SECRET_ENV_PREFIX

DEFAULT_TENANT = "72f988bf-0000-4000-8000-00000000c0d0"
DEFAULT_SUBSCRIPTION = "00000000-0000-4000-8000-00000000ab12"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
ARM_SCOPE = "https://management.azure.com/.default"
#: a Teams bot's token for the Bot Framework connector (cordon.teams.client.bot_token_provider)
BOT_SCOPE = "https://api.botframework.com/.default"
RA_API_VERSION = "2022-04-01"
#: the Activity Log list (Activity Logs - List, api-version 2015-04-01)
ACTIVITY_PATH = "/providers/Microsoft.Insights/eventtypes/management/values"
ACTIVITY_API_VERSION = "2015-04-01"
RA_SEGMENT = "/providers/microsoft.authorization/roleassignments/"
#: Microsoft Graph's well-known appId, and the object id the stand-in gives its service principal.
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
MICROSOFT_TENANT = "f8cdef31-a31e-4b4a-93e4-5f571e91255a"
#: Application permissions (app roles) of Microsoft Graph the stand-in's Graph service principal
#: offers: ``value -> id`` (ids as published in the Microsoft Graph permissions reference).
GRAPH_APP_ROLES: dict[str, str] = {
    "RoleManagement.ReadWrite.Directory": "9e3f62cf-ca93-4989-b6ce-bf83c28f9fe8",
    "AppRoleAssignment.ReadWrite.All": "06b708a9-e830-4db3-a914-8e69da51d44f",
    "Application.ReadWrite.All": "1bfefb4e-e0b5-418b-a88f-73c46d2cc8e9",
    "Application.ReadWrite.OwnedBy": "18a4783c-866b-4cc7-a460-3d5e5662c884",
    "Directory.ReadWrite.All": "19dbc75e-c2e2-444c-a770-ec69d8559fc7",
    "User.ReadWrite.All": "741f803b-c850-494e-b5df-cde7c675a1ca",
    "Mail.Read": "810c84a8-4a9e-49e6-bf7d-12d183f40d01",
    "User.Read.All": "df021288-bdef-4463-88db-98f22de89214",
    "Directory.Read.All": "7ab1d382-f21e-4acd-a863-ba3e13f7da61",
}


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_graph_time(value: Any) -> datetime | None:
    """A Graph ``DateTimeOffset`` (``2024-05-01T10:00:00Z``, fractions and offsets allowed) as an aware
    datetime; ``None`` for ``None`` / empty. ``ApiError`` 400 for anything else, as Graph answers."""
    if not value:
        return None
    try:
        dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, "Request_BadRequest", f"Invalid DateTimeOffset value '{value}'.") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


#: signIn properties the beta endpoint has and v1.0 does not (signIn resource, both versions).
BETA_ONLY_SIGN_IN = frozenset({"signInEventTypes", "servicePrincipalCredentialKeyId"})

_SIGN_IN_EQ = ("appId", "servicePrincipalId", "userId", "ipAddress")


def _split_and(text: str) -> list[str]:
    """``text`` split on the ``and`` outside parentheses."""
    parts, depth, start = [], 0, 0
    for m in re.finditer(r"[()]|\s+and\s+", text):
        tok = m.group(0)
        if tok == "(":
            depth += 1
        elif tok == ")":
            depth -= 1
        elif depth == 0:
            parts.append(text[start:m.start()])
            start = m.end()
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _sign_in_filter(text: str | None) -> Callable[[dict[str, Any]], bool]:
    """A predicate on a stored signIn for a beta ``$filter`` (module docstring); 400 for a clause
    the stand-in does not serve, as Graph answers a filter it cannot serve."""
    tests: list[Callable[[dict[str, Any]], bool]] = []
    types: set[str] | None = None
    for clause in _split_and(text or ""):
        bare = clause[1:-1].strip() if clause.startswith("(") and clause.endswith(")") else clause
        m = re.fullmatch(r"(\w+)\s+eq\s+'([^']*)'", bare)
        if m and m.group(1) in _SIGN_IN_EQ:
            key, value = m.groups()
            tests.append(lambda e, key=key, value=value: str(e.get(key) or "").lower() == value.lower())
            continue
        m = re.fullmatch(r"createdDateTime\s+(ge|gt|le|lt)\s+(\S+)", bare)
        if m:
            op, bound = m.group(1), _parse_graph_time(m.group(2))
            if bound is None:
                raise ApiError(400, "Request_UnsupportedQuery", f"invalid DateTimeOffset in '{clause}'")
            cmp = {"ge": lambda a, b: a >= b, "gt": lambda a, b: a > b, "le": lambda a, b: a <= b,
                   "lt": lambda a, b: a < b}[op]
            tests.append(lambda e, cmp=cmp, bound=bound: cmp(_parse_graph_time(e["createdDateTime"]), bound))
            continue
        m = re.fullmatch(r"signInEventTypes/any\((\w+):\s*(.+)\)", bare)
        if m:
            var, body = m.groups()
            alts = re.split(r"\s+or\s+", body.strip())
            got = [re.fullmatch(rf"{var}\s+eq\s+'(\w+)'", a.strip()) for a in alts]
            if all(got):
                types = (types or set()) | {g.group(1) for g in got if g}
                continue
        raise ApiError(400, "Request_UnsupportedQuery",
                       f"Unsupported or invalid query filter clause specified for property '{clause}'.")
    wanted = types if types is not None else {"interactiveUser"}
    tests.append(lambda e: bool(wanted & set(e.get("signInEventTypes") or [])))
    return lambda e: all(t(e) for t in tests)


class ApiError(Exception):
    """An error answer: HTTP ``status``, the API's error ``code`` and ``message``."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _graph_404(what: str) -> ApiError:
    return ApiError(404, "Request_ResourceNotFound", f"Resource '{what}' does not exist or one of its queried "
                    "reference-property objects are not present.")


class _TlsServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer whose accepted connections are wrapped in TLS; the handshake runs in
    the request's own thread, so a slow client never blocks ``accept``."""

    daemon_threads = True

    def __init__(self, addr: tuple[str, int], handler: Any, context: ssl.SSLContext):
        self.context = context
        super().__init__(addr, handler)

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = self.socket.accept()
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            request.do_handshake()
        except (ssl.SSLError, OSError):
            return
        super().finish_request(request, client_address)


class AzureStandIn:
    """The stand-ins (see module doc). State, guarded by one lock:

    * ``clients``: ``client_id -> {"secret", "tenant", "sp_id"}`` allowed the client-credentials
      grant; ``tokens``: ``token -> {"client_id", "scope"}``;
    * ``applications`` / ``service_principals``: ``object id -> Graph JSON`` (``id, appId,
      displayName, passwordCredentials, keyCredentials``; service principals also
      ``accountEnabled`` and ``servicePrincipalType``); ``owners``: ``object id -> [owner ids]``;
    * ``users``: ``object id -> Graph user JSON``;
    * ``federated``: ``application object id -> {fid: federatedIdentityCredential JSON}``;
    * ``role_assignments``: ``lower-cased full ARM ID -> RoleAssignment JSON``;
    * ``requests``: one ``{"api" ("graph"|"arm"|"login"), "method", "path", "query", "body",
      "auth", "client_id", "status"}`` per request received;
    * ``app_role_assignments`` / ``oauth2_grants``: ``id -> appRoleAssignment / oAuth2PermissionGrant
      JSON``; ``directory_role_assignments``: ``id -> unifiedRoleAssignment JSON``; ``sign_ins``: signIn
      JSON list;
    * failures queued by :meth:`fail_next` (and writes acknowledged but not applied, queued by
      :meth:`ack_without_applying`).
    """

    def __init__(self, host: str = "127.0.0.1"):
        self._lock = threading.RLock()
        self.clients: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, dict[str, Any]] = {}
        self.applications: dict[str, dict[str, Any]] = {}
        self.service_principals: dict[str, dict[str, Any]] = {}
        self.owners: dict[str, list[str]] = {}
        self.users: dict[str, dict[str, Any]] = {}
        self.groups: dict[str, dict[str, Any]] = {}  # id -> {id, displayName, members: [object ids]}
        self.federated: dict[str, dict[str, dict[str, Any]]] = {}
        self.role_assignments: dict[str, dict[str, Any]] = {}
        self.app_role_assignments: dict[str, dict[str, Any]] = {}
        self.oauth2_grants: dict[str, dict[str, Any]] = {}
        self.directory_role_assignments: dict[str, dict[str, Any]] = {}
        self.sign_ins: list[dict[str, Any]] = []
        #: Entra audit log records (Graph ``directoryAudit`` JSON) served by ``auditLogs/directoryAudits``
        self.directory_audits: list[dict[str, Any]] = []
        #: Azure Activity Log events (REST ``EventData`` JSON) served by the Activity Log list
        self.activity_events: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        #: page size of ``GET .../appRoleAssignments`` without ``$top`` (Graph's default: 100).
        self.page_size = 100
        self._failures: list[dict[str, Any]] = []
        self.ca = trustme.CA()
        cert = self.ca.issue_cert(host, "localhost")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        #: PEM of the CA that issued the TLS server's certificate.
        self.ca_pem = self.ca.cert_pem.bytes().decode()
        fd, self.ca_path = tempfile.mkstemp(prefix="cordon-azure-ca-", suffix=".pem")
        with os.fdopen(fd, "w") as fh:
            fh.write(self.ca_pem)
        self._graph = ThreadingHTTPServer((host, 0), self._handler_class("graph"))
        self._graph.daemon_threads = True
        self._tls = _TlsServer((host, 0), self._handler_class("tls"), context)
        self._threads: list[threading.Thread] = []

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def graph_url(self) -> str:
        """``http://127.0.0.1:<port>`` (Graph; the SDK's base URL is this plus ``/v1.0``)."""
        host, port = self._graph.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def arm_url(self) -> str:
        """``https://127.0.0.1:<port>`` (ARM and the token endpoint's authority)."""
        host, port = self._tls.server_address[:2]
        return f"https://{host}:{port}"

    def start(self) -> AzureStandIn:
        """Serve both servers in daemon threads; returns ``self``."""
        if not self._threads:
            for name, server in (("graph", self._graph), ("arm", self._tls)):
                t = threading.Thread(target=server.serve_forever, name=f"azure-standin-{name}", daemon=True)
                t.start()
                self._threads.append(t)
        return self

    def stop(self) -> None:
        """Stop serving, close the sockets and delete the CA file."""
        if self._threads:
            self._graph.shutdown()
            self._tls.shutdown()
            for t in self._threads:
                t.join(timeout=5)
            self._threads = []
        self._graph.server_close()
        self._tls.server_close()
        if os.path.exists(self.ca_path):
            os.unlink(self.ca_path)

    def reset(self) -> None:
        """Forget all state, clients, tokens, recorded requests and failures."""
        with self._lock:
            for store in (self.clients, self.tokens, self.applications, self.service_principals, self.owners,
                          self.users, self.federated, self.role_assignments, self.app_role_assignments,
                          self.oauth2_grants, self.directory_role_assignments, self.sign_ins,
                          self.directory_audits, self.activity_events):
                store.clear()
            self.requests.clear()
            self._failures.clear()
            self.page_size = 100

    # -- fault injection and inspection ---------------------------------------------------------
    def fail_next(self, match: str, status: int, times: int = 1, headers: dict[str, str] | None = None) -> None:
        """Answer the next ``times`` requests that match with HTTP ``status`` (and ``headers``, e.g.
        ``{"Retry-After": "0"}``) instead of serving them. ``match`` is an HTTP method (``"POST"``),
        a path prefix (``"/v1.0/servicePrincipals"``) or ``"METHOD /path-prefix"``; path prefixes
        compare case-insensitively. Token requests are never failed."""
        with self._lock:
            self._failures.append({"match": match, "status": status, "left": times, "headers": dict(headers or {})})

    def ack_without_applying(self, match: str, times: int = 1) -> None:
        """Answer the next ``times`` matching requests ``204 No Content`` *without* applying them: a
        write the API acknowledged but that a following read does not show (a lost write, or the
        replication lag of a directory read from another replica). ``match`` as in :meth:`fail_next`."""
        with self._lock:
            self._failures.append({"match": match, "status": 204, "left": times, "headers": {}, "ack": True})

    def api_requests(self, api: str | None = None, mutating: bool | None = None) -> list[dict[str, Any]]:
        """Recorded Graph and ARM requests (not token requests), optionally only of ``api``
        (``"graph"`` / ``"arm"``) and only mutating (not ``GET``) or only reads."""
        with self._lock:
            out = [r for r in self.requests if r["api"] != "login" and (api is None or r["api"] == api)]
        if mutating is not None:
            out = [r for r in out if (r["method"] != "GET") == mutating]
        return out

    @staticmethod
    def _matches(match: str, method: str, path: str) -> bool:
        if " " in match:
            m, _, prefix = match.partition(" ")
            return m.upper() == method and path.lower().startswith(prefix.lower())
        if match.isalpha() and match.isupper():
            return match == method
        return path.lower().startswith(match.lower())

    def _take_failure(self, method: str, path: str) -> dict[str, Any] | None:
        with self._lock:
            for f in self._failures:
                if self._matches(f["match"], method, path):
                    f["left"] -= 1
                    if f["left"] <= 0:
                        self._failures.remove(f)
                    return f
        return None

    # -- seeding (direct writes: the stand-in is ours) --------------------------------------------
    def add_client(self, client_id: str, secret: str, tenant: str, sp_id: str | None = None) -> None:
        """Allow ``client_id`` / ``secret`` the client-credentials grant in ``tenant``."""
        with self._lock:
            self.clients[client_id] = {"secret": secret, "tenant": tenant, "sp_id": sp_id}

    def ensure_application(self, object_id: str, display_name: str = "", app_id: str | None = None) -> dict[str, Any]:
        """Create application ``object_id`` (fresh ``appId`` unless given) if absent; returns it."""
        with self._lock:
            if object_id not in self.applications:
                self.applications[object_id] = {
                    "id": object_id, "appId": app_id or str(uuid.uuid4()),
                    "displayName": display_name or f"app-{object_id[:8]}", "createdDateTime": _iso(_now()),
                    "signInAudience": "AzureADMyOrg", "publisherDomain": "contoso.example",
                    "verifiedPublisher": {"displayName": None, "verifiedPublisherId": None, "addedDateTime": None},
                    "passwordCredentials": [], "keyCredentials": []}
                self.owners.setdefault(object_id, [])
                self.federated.setdefault(object_id, {})
            return self.applications[object_id]

    def ensure_service_principal(self, object_id: str, display_name: str = "", app_id: str | None = None,
                                 account_enabled: bool = True) -> dict[str, Any]:
        """Create service principal ``object_id`` if absent; returns it."""
        with self._lock:
            if object_id not in self.service_principals:
                self.service_principals[object_id] = {
                    "id": object_id, "appId": app_id or str(uuid.uuid4()),
                    "displayName": display_name or f"sp-{object_id[:8]}", "accountEnabled": account_enabled,
                    "servicePrincipalType": "Application", "appOwnerOrganizationId": DEFAULT_TENANT,
                    "appRoles": [],
                    "verifiedPublisher": {"displayName": None, "verifiedPublisherId": None, "addedDateTime": None},
                    "passwordCredentials": [], "keyCredentials": []}
                self.owners.setdefault(object_id, [])
            return self.service_principals[object_id]

    def ensure_user(self, object_id: str, upn: str | None = None, display_name: str = "",
                    mail: str | None = None) -> dict[str, Any]:
        """Create user ``object_id`` if absent (no ``mail`` unless given, as for a user without
        a mailbox); returns it."""
        with self._lock:
            if object_id not in self.users:
                upn = upn or f"user-{object_id[:8]}@contoso.example"
                self.users[object_id] = {"id": object_id, "userPrincipalName": upn, **({"mail": mail} if mail else {}),
                                         "displayName": display_name or upn.split("@")[0], "accountEnabled": True,
                                         "signInSessionsValidFromDateTime": "2024-01-01T00:00:00Z"}
            return self.users[object_id]

    def ensure_group(self, group_id: str, display_name: str = "") -> dict[str, Any]:
        """Create security group ``group_id`` (no members) if absent; returns it."""
        with self._lock:
            return self.groups.setdefault(group_id, {"id": group_id, "members": [],
                                                     "displayName": display_name or f"group-{group_id[:8]}"})

    def add_group_member(self, group_id: str, member_id: str) -> None:
        """Seed: put user or group ``member_id`` in group ``group_id`` (created if absent); a group
        member nests (its members count for ``checkMemberGroups``)."""
        self.ensure_group(group_id)
        with self._lock:
            if member_id not in self.groups[group_id]["members"]:
                self.groups[group_id]["members"].append(member_id)

    def _transitive_groups(self, object_id: str) -> set[str]:
        """The groups ``object_id`` is in, directly or through nested groups."""
        found: set[str] = set()
        todo = [object_id]
        while todo:
            member = todo.pop()
            for gid, group in self.groups.items():
                if member in group["members"] and gid not in found:
                    found.add(gid)
                    todo.append(gid)
        return found

    def _graph_group(self, method: str, gid: str, sub: str | None, body: Any) -> tuple[int, Any]:
        group = self.groups.get(gid)
        if group is None:
            raise _graph_404(gid)
        if sub is None and method == "GET":
            return 200, {"@odata.type": "#microsoft.graph.group", "id": gid, "displayName": group["displayName"],
                         "securityEnabled": True, "mailEnabled": False}
        if sub == "members" and method == "GET":
            return 200, {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#directoryObjects",
                         "value": [{"@odata.type": "#microsoft.graph.user", "id": m} for m in group["members"]]}
        if sub == "members/$ref" and method == "POST":
            ref = str((body or {}).get("@odata.id") or "")
            oid = ref.rstrip("/").rsplit("/", 1)[-1]
            if not oid or oid not in {**self.users, **self.service_principals}:
                raise _graph_404(oid or ref)
            with self._lock:
                if oid in group["members"]:
                    raise ApiError(400, "Request_BadRequest",
                                   "One or more added object references already exist for the following modified "
                                   "properties: 'members'.")
                group["members"].append(oid)
            return 204, None
        m = re.fullmatch(r"members/([^/]+)/\$ref", sub or "")
        if m and method == "DELETE":
            with self._lock:
                if m.group(1) not in group["members"]:
                    raise _graph_404(m.group(1))
                group["members"].remove(m.group(1))
            return 204, None
        raise ApiError(405, "Request_BadRequest", f"{method} groups/{gid}/{sub} is not supported by the stand-in.")

    def _object(self, object_id: str) -> dict[str, Any]:
        obj = self.applications.get(object_id) or self.service_principals.get(object_id)
        if obj is None:
            raise KeyError(f"no application or service principal {object_id}")
        return obj

    def add_password(self, object_id: str, key_id: str | None = None, display_name: str = "",
                     start: datetime | None = None, end: datetime | None = None) -> dict[str, Any]:
        """Add a password credential (keyId ``key_id``, ``startDateTime`` ``start``, default now;
        ``endDateTime`` ``end``, default two years later, as Graph's ``addPassword`` defaults them) to
        the application or service principal ``object_id`` if absent; returns it (never with
        ``secretText``)."""
        with self._lock:
            obj = self._object(object_id)
            key_id = key_id or str(uuid.uuid4())
            for cred in obj["passwordCredentials"]:
                if cred["keyId"] == key_id:
                    return cred
            start = start or _now()
            cred = {"keyId": key_id, "displayName": display_name or None, "hint": secrets.token_hex(2)[:3],
                    "startDateTime": _iso(start), "endDateTime": _iso(end or start + timedelta(days=730)),
                    "customKeyIdentifier": None, "secretText": None}
            obj["passwordCredentials"].append(cred)
            return cred

    def add_key(self, object_id: str, key_id: str | None = None, display_name: str = "",
                start: datetime | None = None) -> dict[str, Any]:
        """Add a certificate key credential (keyId ``key_id``, ``startDateTime`` ``start``, default
        now) to ``object_id`` if absent; returns it."""
        with self._lock:
            obj = self._object(object_id)
            key_id = key_id or str(uuid.uuid4())
            for cred in obj["keyCredentials"]:
                if cred["keyId"] == key_id:
                    return cred
            start = start or _now()
            cred = {"keyId": key_id, "displayName": display_name or f"CN={key_id[:8]}", "type": "AsymmetricX509Cert",
                    "usage": "Verify", "startDateTime": _iso(start), "endDateTime": _iso(start + timedelta(days=365)),
                    "customKeyIdentifier": base64.b16encode(secrets.token_bytes(20)).decode(),
                    "key": base64.b64encode(secrets.token_bytes(64)).decode()}
            obj["keyCredentials"].append(cred)
            return cred

    def add_federated(self, app_object_id: str, fid: str | None = None, subject: str = "repo:evil/x:ref:main",
                      issuer: str = "https://token.actions.githubusercontent.com") -> dict[str, Any]:
        """Add a federated identity credential to application ``app_object_id`` if absent."""
        with self._lock:
            self.ensure_application(app_object_id)
            fid = fid or str(uuid.uuid4())
            return self.federated[app_object_id].setdefault(fid, {
                "id": fid, "name": f"fic-{fid[:8]}", "issuer": issuer, "subject": subject,
                "audiences": ["api://AzureADTokenExchange"], "description": None})

    def add_owner(self, object_id: str, owner_id: str) -> None:
        """Make user or service principal ``owner_id`` an owner of ``object_id``."""
        with self._lock:
            owners = self.owners.setdefault(object_id, [])
            if owner_id not in owners:
                owners.append(owner_id)

    def ensure_role_assignment(self, assignment_id: str, principal_id: str, role_definition_id: str,
                               principal_type: str = "ServicePrincipal") -> dict[str, Any]:
        """Create role assignment ``assignment_id`` (full ARM ID) if absent; returns it."""
        scope, _, name = _split_ra(assignment_id)
        with self._lock:
            key = assignment_id.lower()
            if key not in self.role_assignments:
                now = _iso(_now())
                self.role_assignments[key] = {
                    "id": assignment_id, "name": name, "type": "Microsoft.Authorization/roleAssignments",
                    "properties": {"roleDefinitionId": role_definition_id, "principalId": principal_id,
                                   "principalType": principal_type, "scope": scope, "condition": None,
                                   "conditionVersion": None, "createdOn": now, "updatedOn": now,
                                   "createdBy": None, "updatedBy": None, "delegatedManagedIdentityResourceId": None,
                                   "description": None}}
            return self.role_assignments[key]

    def ensure_graph_resource(self, object_id: str | None = None) -> dict[str, Any]:
        """The tenant's service principal of Microsoft Graph (appId :data:`GRAPH_APP_ID`, published
        by Microsoft's tenant) with the app roles of :data:`GRAPH_APP_ROLES` (and any other role added
        with :meth:`add_app_role`); created if absent, as ``object_id`` (default: a fixed id). A tenant
        has one: ``ValueError`` when it exists under another id than ``object_id``."""
        with self._lock:
            existing = next((sp for sp in self.service_principals.values() if sp["appId"] == GRAPH_APP_ID), None)
            if existing is not None and object_id and existing["id"] != object_id:
                raise ValueError(f"Microsoft Graph's service principal is {existing['id']}, not {object_id}")
            oid = existing["id"] if existing else (object_id or str(uuid.uuid5(uuid.NAMESPACE_URL,
                                                                              "standin/microsoft-graph-sp")))
            sp = self.ensure_service_principal(oid, "Microsoft Graph", app_id=GRAPH_APP_ID)
            sp["appOwnerOrganizationId"] = MICROSOFT_TENANT
            extra = [r for r in sp.get("appRoles") or [] if r["id"] not in GRAPH_APP_ROLES.values()]
            sp["appRoles"] = [{"allowedMemberTypes": ["Application"], "description": value, "displayName": value,
                               "id": rid, "isEnabled": True, "origin": "Application", "value": value}
                              for value, rid in GRAPH_APP_ROLES.items()] + extra
            return sp

    def add_app_role(self, resource_id: str, app_role_id: str, value: str) -> dict[str, Any]:
        """Define app role ``app_role_id`` (``value``, allowed for applications) on service principal
        ``resource_id`` if it has no role with that id; returns the role."""
        with self._lock:
            roles = self.service_principals[resource_id].setdefault("appRoles", [])
            for role in roles:
                if role["id"] == app_role_id:
                    return role
            role = {"allowedMemberTypes": ["Application"], "description": value, "displayName": value,
                    "id": app_role_id, "isEnabled": True, "origin": "Application", "value": value}
            roles.append(role)
            return role

    def assign_app_role(self, principal_id: str, resource_id: str, app_role_id: str) -> dict[str, Any]:
        """The ``appRoleAssignment`` of ``app_role_id`` of ``resource_id`` to ``principal_id``: the
        existing one, else a new one (both service principals and the role must exist)."""
        with self._lock:
            for a in self.app_role_assignments.values():
                if (a["principalId"], a["resourceId"], a["appRoleId"]) == (principal_id, resource_id, app_role_id):
                    return a
            return self._new_app_role_assignment(principal_id, resource_id, app_role_id)

    def grant_app_role(self, principal_id: str, permission: str, resource_id: str | None = None) -> dict[str, Any]:
        """Grant service principal ``principal_id`` the application permission ``permission`` (an app
        role ``value`` of ``resource_id``, default Microsoft Graph); returns the ``appRoleAssignment``."""
        with self._lock:
            resource = self.service_principals[resource_id] if resource_id else self.ensure_graph_resource()
            role = next(r for r in resource.get("appRoles") or [] if r["value"] == permission)
            return self._new_app_role_assignment(principal_id, resource["id"], role["id"])

    def _new_app_role_assignment(self, principal_id: str, resource_id: str, app_role_id: str) -> dict[str, Any]:
        principal = self.service_principals.get(principal_id)
        if principal is None:
            raise _graph_404(principal_id)
        resource = self.service_principals.get(resource_id)
        if resource is None:
            raise _graph_404(resource_id)
        if not any(r["id"] == app_role_id for r in resource.get("appRoles") or []):
            raise ApiError(400, "Request_BadRequest", "Permission being assigned was not found on application")
        for a in self.app_role_assignments.values():
            if (a["principalId"], a["resourceId"], a["appRoleId"]) == (principal_id, resource_id, app_role_id):
                raise ApiError(400, "Request_BadRequest",
                               "Permission being assigned already exists on the object")
        # Graph's appRoleAssignment ids are 43-character base64url strings, not GUIDs
        aid = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        assignment = {"id": aid, "appRoleId": app_role_id, "createdDateTime": _iso(_now()), "deletedDateTime": None,
                      "principalDisplayName": principal["displayName"], "principalId": principal_id,
                      "principalType": "ServicePrincipal", "resourceDisplayName": resource["displayName"],
                      "resourceId": resource_id}
        self.app_role_assignments[aid] = assignment
        return assignment

    def grant_delegated(self, client_id: str, scope: str, consent_type: str = "AllPrincipals",
                        principal_id: str | None = None, resource_id: str | None = None) -> dict[str, Any]:
        """Record an ``oAuth2PermissionGrant`` (delegated permissions ``scope``, space-separated) of
        client service principal ``client_id`` on ``resource_id`` (default Microsoft Graph)."""
        with self._lock:
            resource = resource_id or self.ensure_graph_resource()["id"]
            gid = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
            grant = {"id": gid, "clientId": client_id, "consentType": consent_type, "principalId": principal_id,
                     "resourceId": resource, "scope": scope}
            self.oauth2_grants[gid] = grant
            return grant

    def add_directory_role_member(self, template_id: str, principal_id: str,
                                  assignment_id: str | None = None) -> dict[str, Any]:
        """Make ``principal_id`` an active member of the built-in directory role ``template_id``
        (a ``unifiedRoleAssignment`` at directory scope ``/``) if it is not yet; returns it."""
        with self._lock:
            for a in self.directory_role_assignments.values():
                if (a["principalId"], a["roleDefinitionId"], a["directoryScopeId"]) == (principal_id, template_id, "/"):
                    return a
            rid = assignment_id or base64.urlsafe_b64encode(secrets.token_bytes(24)).decode().rstrip("=")
            assignment = {"id": rid, "principalId": principal_id, "roleDefinitionId": template_id,
                          "directoryScopeId": "/"}
            self.directory_role_assignments[rid] = assignment
            return assignment

    def add_sign_in(self, app_id: str, *, ip: str = "203.0.113.9", when: datetime | None = None,
                    user: str | None = None, status: int = 0, user_id: str | None = None,
                    event_type: str | None = None, credential_key_id: str | None = None) -> dict[str, Any]:
        """Record one ``signIn`` of application ``app_id`` (its service principal's id is
        ``servicePrincipalId``; errorCode ``status``, 0 = success). ``user`` / ``user_id``: the user
        who signed in to the app (UPN, object id); ``event_type``: the beta ``signInEventTypes`` entry
        (default ``interactiveUser`` with a user, else ``servicePrincipal``); ``credential_key_id``: the
        beta ``servicePrincipalCredentialKeyId`` (the secret or certificate a service principal signed
        in with). The v1.0 list leaves the beta-only properties out."""
        with self._lock:
            app_name = next((o["displayName"] for o in (*self.service_principals.values(),
                                                         *self.applications.values()) if o["appId"] == app_id), None)
            sp_id = next((o["id"] for o in self.service_principals.values() if o["appId"] == app_id), None)
            kind = event_type or ("interactiveUser" if user or user_id else "servicePrincipal")
            entry = {"id": str(uuid.uuid4()), "createdDateTime": _iso(when or _now()), "appId": app_id,
                     "servicePrincipalId": sp_id, "servicePrincipalName": app_name if user is None else None,
                     "appDisplayName": app_name, "ipAddress": ip, "clientAppUsed": "Mobile Apps and Desktop clients",
                     "userPrincipalName": user, "userId": user_id, "resourceDisplayName": "Microsoft Graph",
                     "isInteractive": kind == "interactiveUser",
                     "location": {"city": "Redmond", "countryOrRegion": "US"},
                     "status": {"errorCode": status, "failureReason": None if status == 0 else "Other.",
                                "additionalDetails": None},
                     "signInEventTypes": [kind],
                     "servicePrincipalCredentialKeyId": credential_key_id}
            self.sign_ins.append(entry)
            return entry

    # -- HTTP ---------------------------------------------------------------------------------
    def _handler_class(self, which: str) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                pass

            def _serve(self) -> None:
                split = urlsplit(self.path)
                path = unquote(split.path)
                query = {k: v[0] for k, v in parse_qs(split.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                ctype = self.headers.get("Content-Type") or ""
                try:
                    if "x-www-form-urlencoded" in ctype:
                        body: Any = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
                    else:
                        body = json.loads(raw) if raw else {}
                except (ValueError, UnicodeDecodeError):
                    body = {"_raw": raw.decode(errors="replace")}
                api = "graph" if which == "graph" else ("login" if re.match(r"^/[^/]+/(oauth2|v2\.0)/", path)
                                                        else "arm")
                auth = self.headers.get("Authorization")
                rec = {"api": api, "method": self.command, "path": path, "query": query,
                       "body": {k: v for k, v in body.items() if k != "client_secret"} if isinstance(body, dict)
                       else body, "auth": auth, "client_id": None, "status": None}
                headers: dict[str, str] = {}
                try:
                    if api == "login":
                        status, payload = standin._login(self.command, path, body)
                    else:
                        rec["client_id"] = standin._authorize(auth, api)
                        failure = standin._take_failure(self.command, path)
                        if failure and failure.get("ack"):
                            status, payload = 204, None
                        elif failure:
                            headers = failure["headers"]
                            raise ApiError(failure["status"], "InjectedFault" if failure["status"] != 429
                                           else "TooManyRequests", f"injected {failure['status']}")
                        else:
                            with standin._lock:
                                if api == "graph":
                                    status, payload = standin._graph_api(self.command, path, query, body)
                                else:
                                    status, payload = standin._arm_api(self.command, path, query, body)
                except ApiError as err:
                    status, payload = err.status, {"error": {"code": err.code, "message": err.message}}
                    if api == "login":
                        payload = {"error": err.code, "error_description": err.message}
                rec["status"] = status
                with standin._lock:
                    standin.requests.append(rec)
                data = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if payload is not None:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if data:
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve  # noqa: N815

        return Handler

    # -- token endpoint --------------------------------------------------------------------------
    def _login(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        m = re.fullmatch(r"/([^/]+)/v2\.0/\.well-known/openid-configuration", path)
        if m and method == "GET":
            base = f"{self.arm_url}/{m.group(1)}"
            return 200, {"token_endpoint": f"{base}/oauth2/v2.0/token",
                         "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                         "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                         "issuer": f"{base}/v2.0", "jwks_uri": f"{base}/discovery/v2.0/keys",
                         "response_types_supported": ["code", "id_token", "token"],
                         "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"]}
        m = re.fullmatch(r"/([^/]+)/oauth2/v2\.0/token", path)
        if not m or method != "POST":
            raise ApiError(404, "not_found", path)
        tenant = m.group(1)
        if not isinstance(body, dict) or body.get("grant_type") != "client_credentials":
            raise ApiError(400, "unsupported_grant_type", "only client_credentials is served")
        with self._lock:
            client = self.clients.get(str(body.get("client_id")))
            if client is None or not secrets.compare_digest(client["secret"], str(body.get("client_secret", ""))):
                raise ApiError(401, "invalid_client", "AADSTS7000215: Invalid client secret provided.")
            if tenant not in (client["tenant"], "organizations"):
                raise ApiError(400, "invalid_request", f"AADSTS90002: Tenant '{tenant}' not found.")
            scope = str(body.get("scope", ""))
            if scope not in (GRAPH_SCOPE, ARM_SCOPE, BOT_SCOPE):
                raise ApiError(400, "invalid_scope", f"AADSTS70011: scope {scope} is not valid.")
            token = "eyJ0eXAi.standin-" + secrets.token_urlsafe(24)
            self.tokens[token] = {"client_id": body["client_id"], "scope": scope}
        return 200, {"token_type": "Bearer", "expires_in": 3600, "ext_expires_in": 3600, "access_token": token}

    def _authorize(self, auth: str | None, api: str) -> str:
        token = (auth or "").removeprefix("Bearer ").strip()
        with self._lock:
            grant = self.tokens.get(token) if auth and auth.startswith("Bearer ") else None
        want = GRAPH_SCOPE if api == "graph" else ARM_SCOPE
        if grant is None or grant["scope"] != want:
            code = "InvalidAuthenticationToken" if api == "graph" else "AuthenticationFailed"
            raise ApiError(401, code, f"Access token is missing, invalid or not for {want}.")
        return grant["client_id"]

    # -- Graph v1.0 -------------------------------------------------------------------------------
    def _graph_api(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        alt = re.fullmatch(r"/v1\.0/(servicePrincipals|applications)\(appId='([^']+)'\)(/.+)?", path)
        if alt:  # alternate key: /applications(appId='...'), /servicePrincipals(appId='...')
            store = self.service_principals if alt.group(1) == "servicePrincipals" else self.applications
            found = next((o["id"] for o in store.values() if o["appId"].lower() == alt.group(2).lower()), None)
            if found is None:
                raise _graph_404(alt.group(2))
            path = f"/v1.0/{alt.group(1)}/{found}{alt.group(3) or ''}"
        if path.startswith("/v1.0/roleManagement/directory/roleAssignments"):
            return self._graph_role_assignments(method, path, query, body)
        if path == "/v1.0/auditLogs/signIns":
            return self._graph_sign_ins(method, query)
        if path == "/beta/auditLogs/signIns":
            return self._graph_beta_sign_ins(method, query)
        if path == "/v1.0/auditLogs/directoryAudits":
            return self._graph_directory_audits(method, query)
        g = re.fullmatch(r"/v1\.0/groups/([^/]+)(?:/(.+))?", path)
        if g:
            return self._graph_group(method, g.group(1), g.group(2), body)
        m = re.fullmatch(r"/v1\.0/(servicePrincipals|applications|users)/([^/]+)(?:/(.+))?", path)
        if not m:
            raise ApiError(400, "BadRequest", f"Resource not found for the segment '{path}'.")
        collection, oid, sub = m.groups()
        if sub == "memberOf" and method == "GET" and collection in ("servicePrincipals", "users"):
            if oid not in (self.service_principals if collection == "servicePrincipals" else self.users):
                raise _graph_404(oid)
            return 200, {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#directoryObjects",
                         "value": self._member_of(oid)}
        if collection == "users":
            return self._graph_user(method, oid, sub, body, query)
        if collection == "servicePrincipals" and sub and sub.split("/")[0] in ("appRoleAssignments",
                                                                               "oauth2PermissionGrants"):
            if oid not in self.service_principals:
                raise _graph_404(oid)
            return self._graph_sp_grants(method, oid, sub, body, query)
        store = self.service_principals if collection == "servicePrincipals" else self.applications
        obj = store.get(oid)
        if obj is None:
            raise _graph_404(oid)
        odata = ("#microsoft.graph.servicePrincipal" if collection == "servicePrincipals"
                 else "#microsoft.graph.application")
        if sub is None and method == "GET":
            view = copy.deepcopy(obj)
            keep_key = "keycredentials" in query.get("$select", "").lower()
            for k in view["keyCredentials"]:
                if not keep_key:
                    k["key"] = None
            return 200, {"@odata.context": f"https://graph.microsoft.com/v1.0/$metadata#{collection}/$entity",
                         "@odata.type": odata, **view}
        if sub is None and method == "PATCH":
            allowed = {"displayName", "keyCredentials"} | ({"accountEnabled"} if collection == "servicePrincipals"
                                                           else set())
            for k, v in body.items():
                if k.startswith("@odata") or v is None:
                    continue
                if k not in allowed:
                    raise ApiError(400, "Request_BadRequest", f"Property '{k}' cannot be updated here.")
                if k == "keyCredentials":
                    obj["keyCredentials"] = self._patched_keys(obj["keyCredentials"], v)
                else:
                    obj[k] = v
            return 204, None
        if sub == "owners" and method == "GET":
            out = []
            for owner in self.owners.get(oid, []):
                if owner in self.users:
                    u = self.users[owner]
                    out.append({"@odata.type": "#microsoft.graph.user", "id": owner,
                                "displayName": u["displayName"], "userPrincipalName": u["userPrincipalName"]})
                elif owner in self.service_principals:
                    s = self.service_principals[owner]
                    out.append({"@odata.type": "#microsoft.graph.servicePrincipal", "id": owner,
                                "displayName": s["displayName"], "appId": s["appId"]})
            return 200, {"value": out}
        if sub == "removePassword" and method == "POST":
            key_id = str(body.get("keyId") or "")
            creds = obj["passwordCredentials"]
            if not any(c["keyId"] == key_id for c in creds):
                raise ApiError(400, "Request_BadRequest", f"No password credential found with keyId {key_id}.")
            obj["passwordCredentials"] = [c for c in creds if c["keyId"] != key_id]
            return 204, None
        if sub == "addPassword" and method == "POST":
            pc = body.get("passwordCredential") or {}
            # startDateTime / endDateTime as the caller sent them, else Graph's defaults (now, +2 years)
            cred = self.add_password(oid, display_name=pc.get("displayName") or "",
                                     start=_parse_graph_time(pc.get("startDateTime")),
                                     end=_parse_graph_time(pc.get("endDateTime")))
            return 200, {"@odata.type": "#microsoft.graph.passwordCredential", **cred,
                         "secretText": secrets.token_urlsafe(30)}
        if sub and sub.startswith("federatedIdentityCredentials") and collection == "applications":
            creds = self.federated.setdefault(oid, {})
            fid = sub.split("/", 1)[1] if "/" in sub else None
            if fid is None and method == "GET":
                return 200, {"value": [copy.deepcopy(c) for c in creds.values()]}
            if fid is not None:
                if fid not in creds:
                    raise _graph_404(fid)
                if method == "GET":
                    return 200, copy.deepcopy(creds[fid])
                if method == "DELETE":
                    del creds[fid]
                    return 204, None
        raise ApiError(405, "Request_BadRequest", f"{method} {path} is not supported by the stand-in.")

    @staticmethod
    def _patched_keys(current: list[dict[str, Any]], sent: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Graph's keyCredentials PATCH replaces the collection; an existing credential may be kept
        by sending its keyId with its ``key``; a new one needs a ``key``."""
        by_id = {c["keyId"]: c for c in current}
        out = []
        for k in sent:
            old = by_id.get(str(k.get("keyId")))
            if old is not None:
                if k.get("key") and k["key"] != old["key"]:
                    raise ApiError(400, "Request_BadRequest", f"key of credential {old['keyId']} cannot change")
                out.append(old)
            else:
                if not k.get("key"):
                    raise ApiError(400, "Request_BadRequest", "Key credential without key value.")
                # Graph gives every credential a startDateTime (the certificate's notBefore when the
                # caller sends none; the stand-in, which does not parse certificates, takes now)
                start = _parse_graph_time(k.get("startDateTime")) or _now()
                end = _parse_graph_time(k.get("endDateTime")) or start + timedelta(days=365)
                out.append({**k, "keyId": k.get("keyId") or str(uuid.uuid4()), "startDateTime": _iso(start),
                            "endDateTime": _iso(end)})
        return out

    def _member_of(self, oid: str) -> list[dict[str, Any]]:
        """The ``directoryRole`` objects ``oid`` is an active member of (directory scope ``/``)."""
        from cordon.providers.azure.detections import DIRECTORY_ROLE_TEMPLATES

        out = []
        for a in self.directory_role_assignments.values():
            if a["principalId"] != oid or a["directoryScopeId"] != "/":
                continue
            tid = a["roleDefinitionId"]
            out.append({"@odata.type": "#microsoft.graph.directoryRole",
                        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"standin/directoryRole/{tid}")),
                        "displayName": DIRECTORY_ROLE_TEMPLATES.get(tid, f"role {tid}"), "description": None,
                        "roleTemplateId": tid, "deletedDateTime": None})
        return out

    def _graph_sp_grants(self, method: str, oid: str, sub: str, body: Any,
                         query: dict[str, str] | None = None) -> tuple[int, Any]:
        """``/servicePrincipals/{id}/appRoleAssignments[/{aid}]`` and ``/oauth2PermissionGrants``."""
        parts, query = sub.split("/"), query or {}
        if parts[0] == "oauth2PermissionGrants" and len(parts) == 1 and method == "GET":
            return 200, {"value": [copy.deepcopy(g) for g in self.oauth2_grants.values() if g["clientId"] == oid]}
        if parts[0] == "appRoleAssignments" and len(parts) == 1:
            if method == "GET":
                # Graph pages this collection (100 a page by default) with an absolute @odata.nextLink
                # carrying an opaque $skiptoken; the stand-in's token is the offset.
                found = [copy.deepcopy(a) for a in self.app_role_assignments.values() if a["principalId"] == oid]
                start = int(query.get("$skiptoken") or 0)
                size = int(query.get("$top") or self.page_size)
                page: dict[str, Any] = {
                    "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#servicePrincipals('"
                                      f"{oid}')/appRoleAssignments", "value": found[start:start + size]}
                if start + size < len(found):
                    page["@odata.nextLink"] = (f"{self.graph_url}/v1.0/servicePrincipals/{oid}/appRoleAssignments"
                                               f"?$skiptoken={start + size}")
                return 200, page
            if method == "POST":
                b = body if isinstance(body, dict) else {}
                if b.get("principalId") != oid or not b.get("resourceId") or not b.get("appRoleId"):
                    raise ApiError(400, "Request_BadRequest", "principalId (this service principal), resourceId "
                                   "and appRoleId are required")
                return 201, copy.deepcopy(self._new_app_role_assignment(oid, b["resourceId"], b["appRoleId"]))
        if parts[0] == "appRoleAssignments" and len(parts) == 2:
            a = self.app_role_assignments.get(parts[1])
            if a is None or a["principalId"] != oid:
                raise _graph_404(parts[1])
            if method == "GET":
                return 200, copy.deepcopy(a)
            if method == "DELETE":
                del self.app_role_assignments[parts[1]]
                return 204, None
        raise ApiError(405, "Request_BadRequest", f"{method} servicePrincipals/{oid}/{sub} is not supported.")

    @staticmethod
    def _eq_filter(text: str | None, allowed: tuple[str, ...]) -> dict[str, str]:
        """``a eq 'x' and b eq 'y'`` as ``{a: x, b: y}``; 400 for anything else, as Graph does for a
        filter it cannot serve."""
        out: dict[str, str] = {}
        for clause in re.split(r"\s+and\s+", (text or "").strip()) if text else []:
            m = re.fullmatch(r"(\w+)\s+eq\s+'([^']*)'", clause.strip())
            if not m or m.group(1) not in allowed:
                raise ApiError(400, "Request_UnsupportedQuery", f"Unsupported or invalid query filter clause "
                               f"specified for property '{clause}'.")
            out[m.group(1)] = m.group(2)
        return out

    def _graph_role_assignments(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        """``/roleManagement/directory/roleAssignments[/{id}]`` (unifiedRoleAssignment)."""
        rest = path[len("/v1.0/roleManagement/directory/roleAssignments"):].strip("/")
        context = "https://graph.microsoft.com/v1.0/$metadata#roleManagement/directory/roleAssignments"
        if not rest and method == "GET":
            want = self._eq_filter(query.get("$filter"), ("principalId", "roleDefinitionId", "directoryScopeId"))
            found = [copy.deepcopy(a) for a in self.directory_role_assignments.values()
                     if all(str(a.get(k)).lower() == v.lower() for k, v in want.items())]
            return 200, {"@odata.context": context, "value": found}
        if not rest and method == "POST":
            b = body if isinstance(body, dict) else {}
            if not b.get("principalId") or not b.get("roleDefinitionId"):
                raise ApiError(400, "Request_BadRequest", "principalId and roleDefinitionId are required")
            if b["principalId"] not in self.users and b["principalId"] not in self.service_principals:
                raise _graph_404(b["principalId"])
            for a in self.directory_role_assignments.values():
                if (a["principalId"], a["roleDefinitionId"]) == (b["principalId"], b["roleDefinitionId"]):
                    raise ApiError(409, "Request_BadRequest", "A conflicting object with one or more of the "
                                   "specified property values is present in the directory.")
            created = self.add_directory_role_member(b["roleDefinitionId"], b["principalId"])
            created["directoryScopeId"] = b.get("directoryScopeId") or "/"
            return 201, {"@odata.context": f"{context}/$entity", **copy.deepcopy(created)}
        a = self.directory_role_assignments.get(rest)
        if a is None:
            raise _graph_404(rest)
        if method == "GET":
            return 200, {"@odata.context": f"{context}/$entity", **copy.deepcopy(a)}
        if method == "DELETE":
            del self.directory_role_assignments[rest]
            return 204, None
        raise ApiError(405, "Request_BadRequest", f"{method} {path} is not supported by the stand-in.")

    def _graph_sign_ins(self, method: str, query: dict[str, str]) -> tuple[int, Any]:
        """``GET /auditLogs/signIns`` with ``$filter=servicePrincipalId eq '...'`` (or ``appId``) and
        ``$top``, newest first."""
        if method != "GET":
            raise ApiError(405, "Request_BadRequest", f"{method} auditLogs/signIns")
        want = self._eq_filter(query.get("$filter"), ("appId", "servicePrincipalId", "userId", "ipAddress"))
        found = [{k: v for k, v in copy.deepcopy(e).items() if k not in BETA_ONLY_SIGN_IN} for e in self.sign_ins
                 if all(str(e.get(k)) == v for k, v in want.items())]
        found.sort(key=lambda e: e["createdDateTime"], reverse=True)
        top = int(query.get("$top") or 1000)
        return 200, {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#auditLogs/signIns",
                     "value": found[:top]}

    def _graph_beta_sign_ins(self, method: str, query: dict[str, str]) -> tuple[int, Any]:
        """``GET /beta/auditLogs/signIns`` (see the module docstring for the filters it serves)."""
        if method != "GET":
            raise ApiError(405, "Request_BadRequest", f"{method} auditLogs/signIns")
        keep = _sign_in_filter(query.get("$filter"))
        found = [copy.deepcopy(e) for e in self.sign_ins if keep(e)]
        found.sort(key=lambda e: e["createdDateTime"], reverse=True)
        top = max(1, min(int(query.get("$top") or 1000), 1000, self.page_size))
        start = int(query.get("$skiptoken") or 0)
        page = found[start:start + top]
        out: dict[str, Any] = {"@odata.context": "https://graph.microsoft.com/beta/$metadata#auditLogs/signIns",
                               "value": page}
        if start + top < len(found):
            params = {"$filter": query.get("$filter") or "", "$top": str(top), "$skiptoken": str(start + top)}
            out["@odata.nextLink"] = f"{self.graph_url}/beta/auditLogs/signIns?" + "&".join(
                f"{k}={quote(v, safe='')}" for k, v in params.items() if v)
        return 200, out

    def _graph_directory_audits(self, method: str, query: dict[str, str]) -> tuple[int, Any]:
        """``GET /v1.0/auditLogs/directoryAudits`` (module docstring)."""
        if method != "GET":
            raise ApiError(405, "Request_BadRequest", f"{method} auditLogs/directoryAudits")
        tests = []
        for clause in _split_and(query.get("$filter") or ""):
            bare = clause[1:-1].strip() if clause.startswith("(") and clause.endswith(")") else clause
            m = re.fullmatch(r"activityDateTime\s+(ge|gt|le|lt)\s+(\S+)", bare)
            bound = _parse_graph_time(m.group(2)) if m else None
            if m is None or bound is None:
                raise ApiError(400, "Request_UnsupportedQuery",
                               f"Unsupported or invalid query filter clause specified for property '{clause}'.")
            cmp = {"ge": lambda a, b: a >= b, "gt": lambda a, b: a > b, "le": lambda a, b: a <= b,
                   "lt": lambda a, b: a < b}[m.group(1)]
            tests.append(lambda e, cmp=cmp, bound=bound: cmp(_parse_graph_time(e["activityDateTime"]), bound))
        found = [copy.deepcopy(e) for e in self.directory_audits if all(t(e) for t in tests)]
        found.sort(key=lambda e: _parse_graph_time(e["activityDateTime"]), reverse=True)
        top = max(1, min(int(query.get("$top") or 1000), 1000, self.page_size))
        start = int(query.get("$skiptoken") or 0)
        out: dict[str, Any] = {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#auditLogs/directoryAudits",
                               "value": found[start:start + top]}
        if start + top < len(found):
            params = {"$filter": query.get("$filter") or "", "$top": str(top), "$skiptoken": str(start + top)}
            out["@odata.nextLink"] = f"{self.graph_url}/v1.0/auditLogs/directoryAudits?" + "&".join(
                f"{k}={quote(v, safe='')}" for k, v in params.items() if v)
        return 200, out

    def _activity_log(self, method: str, path: str, query: dict[str, str]) -> tuple[int, Any]:
        """``GET /subscriptions/{id}/providers/Microsoft.Insights/eventtypes/management/values``
        (module docstring)."""
        if method != "GET" or query.get("api-version") != ACTIVITY_API_VERSION:
            raise ApiError(400, "InvalidApiVersionParameter", f"api-version {query.get('api-version')} not served")
        sub = path.split("/")[2].lower() if path.lower().startswith("/subscriptions/") else ""
        tests = []
        for clause in _split_and(query.get("$filter") or ""):
            m = re.fullmatch(r"eventTimestamp\s+(ge|le)\s+'([^']+)'", clause.strip())
            bound = _parse_graph_time(m.group(2)) if m else None
            if m is None or bound is None:
                raise ApiError(400, "BadRequest", f"The filter clause '{clause}' is not supported by the stand-in.")
            cmp = (lambda a, b: a >= b) if m.group(1) == "ge" else (lambda a, b: a <= b)
            tests.append(lambda e, cmp=cmp, bound=bound: cmp(_parse_graph_time(e["eventTimestamp"]), bound))
        if not tests:
            raise ApiError(400, "BadRequest", "The $filter must name an eventTimestamp range.")
        found = [copy.deepcopy(e) for e in self.activity_events
                 if str(e.get("subscriptionId", "")).lower() == sub and all(t(e) for t in tests)]
        found.sort(key=lambda e: _parse_graph_time(e["eventTimestamp"]), reverse=True)
        start = int(query.get("$skipToken") or 0)
        out: dict[str, Any] = {"value": found[start:start + self.page_size]}
        if start + self.page_size < len(found):
            params = {"api-version": ACTIVITY_API_VERSION, "$filter": query.get("$filter") or "",
                      "$skipToken": str(start + self.page_size)}
            out["nextLink"] = f"{self.arm_url}{path}?" + "&".join(f"{k}={quote(v, safe='')}"
                                                                  for k, v in params.items())
        return 200, out

    def add_activity_events(self, *events: dict[str, Any]) -> None:
        """Add Activity Log events (the REST ``EventData`` JSON, each with ``eventTimestamp`` and
        ``subscriptionId``) for the Activity Log list to serve."""
        with self._lock:
            self.activity_events.extend(copy.deepcopy(list(events)))

    def add_directory_audits(self, *records: dict[str, Any]) -> None:
        """Add Entra audit log records (Graph ``directoryAudit`` JSON, each with ``id`` and
        ``activityDateTime``) for ``auditLogs/directoryAudits`` to serve."""
        with self._lock:
            self.directory_audits.extend(copy.deepcopy(list(records)))

    def _graph_user(self, method: str, oid: str, sub: str | None, body: Any = None,
                    query: dict[str, str] | None = None) -> tuple[int, Any]:
        # Graph addresses a user by object id or by userPrincipalName
        user = self.users.get(oid) or next((u for u in self.users.values()
                                            if u["userPrincipalName"].lower() == oid.lower()), None)
        if user is None:
            raise _graph_404(oid)
        if sub is None and method == "GET":
            view = copy.deepcopy(user)
            if query and query.get("$select"):
                keep = {k.strip() for k in query["$select"].split(",")} | {"id"}
                view = {k: v for k, v in view.items() if k in keep}
            return 200, {"@odata.type": "#microsoft.graph.user", **view}
        if sub == "revokeSignInSessions" and method == "POST":
            user["signInSessionsValidFromDateTime"] = _iso(_now())
            return 200, {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Edm.Boolean", "value": True}
        if sub is None and method == "PATCH":
            for k, v in (body or {}).items():
                if k.startswith("@odata") or v is None:
                    continue
                if k != "accountEnabled":
                    raise ApiError(400, "Request_BadRequest", f"Property '{k}' cannot be updated here.")
                user["accountEnabled"] = bool(v)
            return 204, None
        if sub == "checkMemberGroups" and method == "POST":
            wanted = [str(g) for g in (body or {}).get("groupIds") or []]
            return 200, {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Collection(Edm.String)",
                         "value": [g for g in wanted if g in self._transitive_groups(user["id"])]}
        raise ApiError(405, "Request_BadRequest", f"{method} users/{oid}/{sub} is not supported by the stand-in.")

    # -- ARM role assignments ----------------------------------------------------------------------
    def _arm_api(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        if path.lower().endswith(ACTIVITY_PATH.lower()):
            return self._activity_log(method, path, query)
        if query.get("api-version") != RA_API_VERSION:
            raise ApiError(400, "InvalidApiVersionParameter", f"api-version {query.get('api-version')} not served")
        lower = path.lower()
        if lower.endswith("/providers/microsoft.authorization/roleassignments") and method == "GET":
            scope = path[: -len("/providers/Microsoft.Authorization/roleAssignments")]
            found = [copy.deepcopy(a) for a in self.role_assignments.values()
                     if (scope.lower() + "/").startswith(a["properties"]["scope"].lower().rstrip("/") + "/")
                     or a["properties"]["scope"].lower().startswith(scope.lower() + "/")
                     or a["properties"]["scope"].lower() == scope.lower()]
            flt = (query.get("$filter") or "").strip()
            if flt:
                m = re.fullmatch(r"principalId\s+eq\s+'([0-9a-fA-F-]{36})'", flt)
                if m is None:
                    raise ApiError(400, "UnsupportedQuery", f"The filter '{flt}' is not supported by the stand-in.")
                found = [a for a in found if a["properties"]["principalId"].lower() == m.group(1).lower()]
            return 200, {"value": found}
        if RA_SEGMENT not in lower:
            raise ApiError(404, "InvalidResourceType", f"no resource at {path}")
        scope, _, name = _split_ra(path)
        key = path.lower()
        current = self.role_assignments.get(key)
        if method == "GET":
            if current is None:
                raise ApiError(404, "RoleAssignmentNotFound", f"The role assignment '{name}' is not found.")
            return 200, copy.deepcopy(current)
        if method == "DELETE":
            if current is None:
                return 204, None
            del self.role_assignments[key]
            return 200, copy.deepcopy(current)
        if method == "PUT":
            props = (body or {}).get("properties") or {}
            if not props.get("roleDefinitionId") or not props.get("principalId"):
                raise ApiError(400, "InvalidRoleAssignmentRequest", "roleDefinitionId and principalId are required")
            if not re.fullmatch(r"[0-9a-fA-F-]{36}", name):
                raise ApiError(400, "InvalidRoleAssignmentId", f"The role assignment ID '{name}' is not valid.")
            if current is not None:
                same = all(current["properties"][k] == props[k] for k in ("roleDefinitionId", "principalId"))
                if not same:
                    raise ApiError(409, "RoleAssignmentExists", "The role assignment already exists.")
                return 200, copy.deepcopy(current)
            created = self.ensure_role_assignment(path, props["principalId"], props["roleDefinitionId"],
                                                  props.get("principalType") or "ServicePrincipal")
            created["properties"]["description"] = props.get("description")
            return 201, copy.deepcopy(created)
        raise ApiError(405, "MethodNotAllowed", f"{method} {path}")


def _split_ra(assignment_id: str) -> tuple[str, str, str]:
    """``/{scope}/providers/Microsoft.Authorization/roleAssignments/{name}`` -> ``(scope, segment,
    name)``; ``ValueError`` otherwise."""
    i = assignment_id.lower().rfind(RA_SEGMENT)
    name = assignment_id[i + len(RA_SEGMENT):] if i >= 0 else ""
    if i < 0 or not name or "/" in name:
        raise ValueError(f"not a role assignment ID: {assignment_id}")
    return assignment_id[:i], assignment_id[i:i + len(RA_SEGMENT)], name


# -- the sandbox -----------------------------------------------------------------------------------
class AzureSandbox:
    """Local Azure for rehearsals and tests: :class:`AzureStandIn` plus Cordon's own identity.

    ``AzureSandbox().start()`` binds both stand-ins on 127.0.0.1 and registers Cordon's app
    registration (client id + secret) with the token endpoint, with its service principal in the
    directory. ``clients(service)`` is the :class:`~cordon.action.ActionContext` client factory
    (real msgraph-sdk / azure-mgmt-authorization; see :func:`cordon.providers.azure.clients.azure_clients`).
    Use as a context manager or call :meth:`stop`.
    """

    def __init__(self, tenant_id: str = DEFAULT_TENANT, subscription_id: str = DEFAULT_SUBSCRIPTION,
                 host: str = "127.0.0.1"):
        self.tenant_id = tenant_id
        self.subscription_id = subscription_id
        self.default_account_id = tenant_id
        self.standin = AzureStandIn(host)
        self.own_client_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"cordon-responder/{tenant_id}"))
        self.own_sp_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"cordon-responder-sp/{tenant_id}"))
        self._secret = secrets.token_urlsafe(32)
        # The client secret reaches other processes through the environment (inherited by a worker
        # spawned after the sandbox starts), never as a flow-run parameter (issue 11).
        self.secret_env = f"{SECRET_ENV_PREFIX}{secrets.token_hex(4).upper()}"
        os.environ[self.secret_env] = self._secret
        self._clients: Any = None
        self._lock = threading.Lock()
        self._register_self()

    @property
    def graph_url(self) -> str:
        """The Graph stand-in's base URL (without ``/v1.0``)."""
        return self.standin.graph_url

    @property
    def arm_url(self) -> str:
        """The ARM stand-in's base URL, also the token authority."""
        return self.standin.arm_url

    def start(self) -> AzureSandbox:
        """Start the stand-ins; returns ``self``."""
        self.standin.start()
        return self

    def stop(self) -> None:
        """Stop the stand-ins and close the clients' event loop."""
        if self._clients is not None and hasattr(self._clients, "close"):
            self._clients.close()
        self.standin.stop()
        os.environ.pop(self.secret_env, None)

    def __enter__(self) -> AzureSandbox:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def reset(self) -> None:
        """Empty the stand-in and re-register Cordon's identity. Tokens already issued to Cordon stay
        valid, so cached clients keep working without a new token exchange."""
        with self.standin._lock:
            mine = {t: g for t, g in self.standin.tokens.items() if g["client_id"] == self.own_client_id}
        self.standin.reset()
        with self.standin._lock:
            self.standin.tokens.update(mine)
        self.default_account_id = self.tenant_id
        self._register_self()

    def _register_self(self) -> None:
        self.standin.add_client(self.own_client_id, self._secret, self.tenant_id, self.own_sp_id)
        self.standin.ensure_service_principal(self.own_sp_id, "Cordon responder", app_id=self.own_client_id)

    def fail_next(self, match: str, status: int, times: int = 1, headers: dict[str, str] | None = None) -> None:
        """Inject failures (see :meth:`AzureStandIn.fail_next`)."""
        self.standin.fail_next(match, status, times=times, headers=headers)

    def cloud_params(self) -> dict[str, Any]:
        """JSON-serialisable parameters from which another process rebuilds the clients with
        :func:`cordon.providers.azure.clients.azure_clients`: ``{"sandbox": True, "tenant_id",
        "subscription_id", "client_id", "client_secret_env" (the name of the environment variable
        holding the secret: the secret itself never travels as a parameter), "authority" (https, the
        token endpoint's host), "graph_url", "arm_url", "ca_pem" (the TLS CA, PEM text),
        "own_object_id"}``."""
        return {"sandbox": True, "tenant_id": self.tenant_id, "subscription_id": self.subscription_id,
                "client_id": self.own_client_id, "client_secret_env": self.secret_env, "authority": self.arm_url,
                "graph_url": self.graph_url, "arm_url": self.arm_url, "ca_pem": self.standin.ca_pem,
                "own_object_id": self.own_sp_id}

    def clients(self, service: str) -> Any:
        """``"graph"`` -> ``msgraph.GraphServiceClient``; ``"authorization"`` ->
        ``AuthorizationManagementClient`` (cached; see :func:`cordon.providers.azure.clients.azure_clients`)."""
        return self.client_factory()(service)

    def client_factory(self) -> Any:
        """The ``clients(service)`` factory (with ``own_identity`` and ``run``), built once."""
        from cordon.providers.azure.clients import azure_clients

        with self._lock:
            if self._clients is None:
                self._clients = azure_clients(self.cloud_params())
            return self._clients

    # -- seeding ------------------------------------------------------------------------------
    def seed_from_detection(self, detection: Any) -> dict[str, Any]:
        """Create in the stand-in what ``detection`` (an Azure
        :class:`~cordon.detections.model.Detection`) says exists. Idempotent.

        A password or certificate the record added without logging its KeyIdentifier (credential uid
        ``None``) is seeded as Graph holds it: one credential of the record's kind, displayName
        ``not logged``, whose ``startDateTime`` is the record's time.

        The owner (``credential.owner``: ``uid`` = object id, ``name`` = display name, ``type`` or
        ``attributes["objectType"]`` = ``Application`` / ``ServicePrincipal``, default
        ``ServicePrincipal``; ``attributes["appId"]``) is created, then by kind: the password
        credential with keyId = uid (``azure_sp_password``), the certificate (``azure_sp_key``),
        the federated credential (``azure_federated_credential``), the role assignment with
        ``attributes["principalId"]`` (default: the target's uid) and
        ``attributes["roleDefinitionId"]`` (default Owner) (``azure_role_assignment``), the user
        (``azure_user``, and ``azure_user_sessions``: the user an actor signed in as), the service
        principal (``azure_service_principal``, ``azure_sp_sign_in``), the member of the
        directory role (``azure_directory_role``), and for ``azure_app_role_assignment`` (uid
        ``<assignee>#<resource>#<appRoleId>``) the assignee (``appId`` from the attributes), the
        resource (Microsoft Graph's service principal under the uid's id when
        ``attributes["resource_app_id"]`` is Graph's appId, else a service principal with that appId),
        the app role (``attributes["app_role_value"]``) on it, and the assignment.

        Returns ``{"tenant", "applications": [...], "service_principals": [...], "passwords": [...],
        "keys": [...], "federated": [...], "role_assignments": [...], "users": [...]}`` plus
        ``"directory_roles"`` / ``"app_role_assignments"`` (assignment ids) when seeded.
        """
        cred = detection.credential
        attrs = dict(cred.attributes or {}) if cred else {}
        uid = (cred.uid or "") if cred else ""
        report: dict[str, Any] = {"tenant": self.tenant_id, "applications": [], "service_principals": [],
                                  "passwords": [], "keys": [], "federated": [], "role_assignments": [],
                                  "users": []}
        if detection.account_uid:
            self.default_account_id = detection.account_uid
        owner = cred.owner if cred else None
        owner_id = owner.uid if owner else None
        otype = str(attrs.get("objectType") or (owner.type if owner else None) or "ServicePrincipal")

        def ensure_owner() -> None:
            if not owner_id:
                return
            name = owner.name or "" if owner else ""
            if otype.lower() == "application":
                self.standin.ensure_application(owner_id, name, attrs.get("appId"))
                if owner_id not in report["applications"]:
                    report["applications"].append(owner_id)
            else:
                self.standin.ensure_service_principal(owner_id, name, attrs.get("appId"))
                if owner_id not in report["service_principals"]:
                    report["service_principals"].append(owner_id)

        if cred is not None and not uid and cred.kind in ("azure_sp_password", "azure_sp_key") and owner_id:
            # a credential the record could not name: the owner exists, holding the credential of the
            # record's kind that Graph started at the record's time (the one the record added)
            ensure_owner()
            password = cred.kind == "azure_sp_password"
            held = [c for c in self.standin._object(owner_id)["passwordCredentials" if password else "keyCredentials"]
                    if c.get("displayName") == "not logged"]
            add = self.standin.add_password if password else self.standin.add_key
            added = held[0] if held else add(owner_id, None, "not logged", start=detection.time)
            report["passwords" if password else "keys"].append(added["keyId"])
            return report
        if cred is None or not uid:
            return report
        if cred.kind == "azure_sp_password" and owner_id:
            ensure_owner()
            self.standin.add_password(owner_id, uid, str(attrs.get("displayName") or ""), detection.time)
            report["passwords"].append(uid)
        elif cred.kind == "azure_sp_key" and owner_id:
            ensure_owner()
            self.standin.add_key(owner_id, uid, str(attrs.get("displayName") or ""))
            report["keys"].append(uid)
        elif cred.kind == "azure_federated_credential":
            m = re.fullmatch(r"([^/]+)/federatedIdentityCredentials/([^/]+)", uid)
            if m:
                self.standin.ensure_application(m.group(1), owner.name or "" if owner else "", attrs.get("appId"))
                report["applications"].append(m.group(1))
                self.standin.add_federated(m.group(1), m.group(2), str(attrs.get("subject") or "repo:evil/x:ref:main"))
                report["federated"].append(uid)
        elif cred.kind == "azure_role_assignment":
            principal = str(attrs.get("principalId") or detection.target.uid or owner_id or "")
            role = str(attrs.get("roleDefinitionId") or f"/subscriptions/{self.subscription_id}/providers/"
                       "Microsoft.Authorization/roleDefinitions/8e3af657-a8ff-443c-a75c-2fe8c4bcb635")
            self.standin.ensure_role_assignment(uid, principal, role, str(attrs.get("principalType")
                                                                          or "ServicePrincipal"))
            report["role_assignments"].append(uid)
        elif cred.kind == "azure_user":
            self.standin.ensure_user(uid, attrs.get("userPrincipalName") or detection.target.name)
            report["users"].append(uid)
        elif cred.kind == "azure_user_app_password":
            self.standin.ensure_user(uid, attrs.get("userPrincipalName") or detection.target.name)
            report["users"].append(uid)
            from cordon.providers.azure.settings import legacy_auth_group

            group = legacy_auth_group()
            if group:  # the group the configured Conditional Access policy blocks legacy sign-in for
                self.standin.ensure_group(group, "Block legacy authentication")
                report["groups"] = [group]
        elif cred.kind == "azure_user_sessions":
            self.standin.ensure_user(uid, attrs.get("userPrincipalName") or detection.target.name)
            report["users"].append(uid)
        elif cred.kind in ("azure_service_principal", "azure_sp_sign_in"):
            self.standin.ensure_service_principal(uid, owner.name or "" if owner else "", attrs.get("appId"))
            report["service_principals"].append(uid)
        elif cred.kind == "azure_app_role_assignment":
            parts = uid.lower().split("#")
            if len(parts) == 3 and all(parts):
                assignee, resource, role = parts
                self.standin.ensure_service_principal(assignee, owner.name or "" if owner else "", attrs.get("appId"))
                report["service_principals"].append(assignee)
                resource_app = str(attrs.get("resource_app_id") or "").lower() or None
                if resource_app == GRAPH_APP_ID:
                    self.standin.ensure_graph_resource(resource)
                else:
                    self.standin.ensure_service_principal(resource, str(attrs.get("resource_display_name") or ""),
                                                          resource_app)
                report["service_principals"].append(resource)
                self.standin.add_app_role(resource, role, str(attrs.get("app_role_value") or f"role-{role[:8]}"))
                assigned = self.standin.assign_app_role(assignee, resource, role)
                report.setdefault("app_role_assignments", []).append(assigned["id"])
        elif cred.kind == "azure_directory_role":
            from cordon.providers.azure.detections import directory_role_template

            role, _, member = uid.partition("#")
            template = directory_role_template(role) or directory_role_template(attrs.get("roleDisplayName"))
            if template and member:
                if str(owner.type if owner else "").lower() == "serviceprincipal":
                    self.standin.ensure_service_principal(member, owner.name or "" if owner else "")
                    report["service_principals"].append(member)
                else:
                    self.standin.ensure_user(member, owner.name if owner else None)
                    report["users"].append(member)
                self.standin.add_directory_role_member(template, member)
                report.setdefault("directory_roles", []).append(f"{template}#{member}")
        return report
