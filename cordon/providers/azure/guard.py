"""The Azure provider's own guard (:meth:`cordon.providers.azure.AzureProvider.guard`, called by
:func:`cordon.respond.guard` before any plan): never remove a credential from a managed identity.

Azure rotates managed identities' certificates itself (the first-party app "Managed Service
Identity" adds the new one); removing it breaks the resource the identity belongs to and contains
nothing. The parser suppresses such records when they show it
(:func:`cordon.providers.azure.detections._managed_identity_rotation`); this guard covers a credential
add that reached enrichment anyway (a record that does not log the service principal names, an actor
Cordon could not name): when the owner's ``servicePrincipalType`` is ``ManagedIdentity``, containment
is refused with the reason.

Where the type comes from: the enrichment's ``azure.service-principal`` facts
(:class:`cordon.providers.azure.actions.ServicePrincipalFacts`: ``service_principal_type`` of the named
object, ``service_principal.service_principal_type`` of its pair) when the caller passes them; else one
Graph read of the owner (``GET /servicePrincipals/{id}?$select=id,servicePrincipalType``, Microsoft Graph
servicePrincipal resource, https://learn.microsoft.com/graph/api/resources/serviceprincipal). A read
that fails refuses nothing (the containment action reads the same object and fails on its own).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: Credential kinds held in an application's or service principal's ``passwordCredentials`` /
#: ``keyCredentials`` (what a managed identity carries).
SP_CREDENTIAL_KINDS = frozenset({"azure_sp_password", "azure_sp_key"})

#: ``servicePrincipalType`` of a managed identity (Microsoft Graph servicePrincipal resource).
MANAGED_IDENTITY = "ManagedIdentity"

#: The enrichment action whose facts carry ``service_principal_type``.
FACTS_ACTION = "azure.service-principal"


def enriched_service_principal_type(enrichment: dict[str, Any] | None) -> str | None:
    """``ManagedIdentity`` when the ``azure.service-principal`` facts in ``enrichment``
    (``{action name: facts}``) say the named object or its paired service principal is one, else
    the named object's ``service_principal_type``; ``None`` when the facts are absent or failed
    (``{"error": ...}``)."""
    facts = (enrichment or {}).get(FACTS_ACTION)
    if not isinstance(facts, dict) or not facts.get("exists"):
        return None
    pair = facts.get("service_principal") if isinstance(facts.get("service_principal"), dict) else {}
    types = [facts.get("service_principal_type"), pair.get("service_principal_type")]
    if MANAGED_IDENTITY in types:
        return MANAGED_IDENTITY
    return next((t for t in types if isinstance(t, str) and t), None)


def read_service_principal_type(clients: Callable[..., Any], object_id: str) -> str | None:
    """The ``servicePrincipalType`` Graph gives for service principal ``object_id`` through an Azure
    client factory (:mod:`cordon.providers.azure.clients`: ``clients("graph")`` and
    ``clients.run(coro)``); ``None`` when it cannot be read (not an Azure factory, 404, 403, a
    network error)."""
    run = getattr(clients, "run", None)
    if not callable(run):
        return None
    try:
        from kiota_abstractions.base_request_configuration import RequestConfiguration

        builder = clients("graph").service_principals.by_service_principal_id(object_id)
        query = builder.ServicePrincipalItemRequestBuilderGetQueryParameters(select=["id", "servicePrincipalType"])
        sp = run(builder.get(request_configuration=RequestConfiguration(query_parameters=query)))
    except Exception:  # noqa: BLE001 - unreadable: this guard refuses nothing, the action's own read decides
        return None
    value = getattr(sp, "service_principal_type", None)
    return value if isinstance(value, str) else None


def managed_identity_refusal(detection: Any, clients: Callable[..., Any],
                             enrichment: dict[str, Any] | None = None) -> str | None:
    """The reason to refuse containment of ``detection`` (a :class:`cordon.detections.model.Detection`)
    because its credential belongs to a managed identity, or ``None``.

    Only password / certificate credentials (:data:`SP_CREDENTIAL_KINDS`) of an owner that may be a
    service principal (type ``ServicePrincipal`` or not given; an application object is never a
    managed identity) are looked at; the type comes from ``enrichment`` when it has the
    ``azure.service-principal`` facts, else from one Graph read (see the module docstring).
    """
    cred = detection.credential
    if cred is None or cred.kind not in SP_CREDENTIAL_KINDS or cred.owner is None or not cred.owner.uid:
        return None
    if cred.owner.type not in (None, "ServicePrincipal"):
        return None
    kind = enriched_service_principal_type(enrichment)
    where = "enrichment"
    if kind is None:
        kind, where = read_service_principal_type(clients, cred.owner.uid), "Graph"
    if kind != MANAGED_IDENTITY:
        return None
    return (f"{cred.owner.name or cred.owner.uid} is a managed identity (servicePrincipalType ManagedIdentity, "
            f"from {where}): Azure rotates its certificates itself; its credentials are never removed")


#: Tenants that publish Microsoft's first-party applications (a service principal's
#: ``appOwnerOrganizationId``): Microsoft Services and Microsoft Corp, as Microsoft's "Verify
#: first-party Microsoft applications in sign-in reports" lists them.
MICROSOFT_TENANTS = frozenset({"f8cdef31-a31e-4b4a-93e4-5f571e91255a", "72f988bf-86f1-41af-91ab-2d7cd011db47"})


def actor_service_principal_refusal(detection: Any, clients: Callable[..., Any]) -> str | None:
    """The reason to refuse disabling the service principal an actor signed in as (credential kind
    ``azure_sp_sign_in``, :mod:`cordon.providers.azure.actor`), or ``None``: it is a managed identity
    (``servicePrincipalType`` ``ManagedIdentity``: Azure's own, disabling it breaks its resource) or a
    Microsoft first-party app (``appOwnerOrganizationId`` in :data:`MICROSOFT_TENANTS` and not the
    detection's own tenant). One Graph read, ``GET /servicePrincipals/{id}?$select=id,
    servicePrincipalType,appOwnerOrganizationId`` (servicePrincipal resource,
    https://learn.microsoft.com/graph/api/resources/serviceprincipal?view=graph-rest-1.0); a read that
    fails refuses nothing (the containment action reads the same object and fails on its own)."""
    cred = detection.credential
    if cred is None or cred.kind != "azure_sp_sign_in" or not cred.uid:
        return None
    run = getattr(clients, "run", None)
    if not callable(run):
        return None
    try:
        from kiota_abstractions.base_request_configuration import RequestConfiguration

        builder = clients("graph").service_principals.by_service_principal_id(cred.uid)
        query = builder.ServicePrincipalItemRequestBuilderGetQueryParameters(
            select=["id", "servicePrincipalType", "appOwnerOrganizationId"])
        sp = run(builder.get(request_configuration=RequestConfiguration(query_parameters=query)))
    except Exception:  # noqa: BLE001 - unreadable: the action's own read decides
        return None
    who = cred.owner.name if cred.owner and cred.owner.name else cred.uid
    if getattr(sp, "service_principal_type", None) == MANAGED_IDENTITY:
        return f"{who} is a managed identity (servicePrincipalType ManagedIdentity, from Graph): never disabled"
    owner_org = str(getattr(sp, "app_owner_organization_id", None) or "").lower()
    if owner_org in MICROSOFT_TENANTS and owner_org != str(detection.account_uid or "").lower():
        return (f"{who} is a Microsoft first-party application (appOwnerOrganizationId {owner_org}, from Graph): "
                f"never disabled")
    return None


__all__ = ["FACTS_ACTION", "MANAGED_IDENTITY", "MICROSOFT_TENANTS", "SP_CREDENTIAL_KINDS",
           "actor_service_principal_refusal", "enriched_service_principal_type", "managed_identity_refusal",
           "read_service_principal_type"]
