"""The ``kubernetes:`` section of ``cordon.yaml`` (``Config.raw["kubernetes"]``): how Cordon reaches a
real cluster when the run's ``cloud`` parameters do not say (the sandbox's do).

.. code-block:: yaml

    kubernetes:
      kubeconfig: ~/.kube/config     # optional; kubernetes.config.load_kube_config's default otherwise
      context: prod-admin            # optional kubeconfig context
      in_cluster: false              # true: the Pod's ServiceAccount (load_incluster_config)
      service_account: system:serviceaccount:cordon:cordon-responder   # Cordon's own principal
      act_in_kube_system: false      # true: objects in kube-system may be contained (never system:
                                     # principals or kube-system ServiceAccounts as subjects)
      clusters:                      # optional: one entry per cluster, by the name its audit layout
        prod-1:                      # gives (EKS log group, GKE cluster_name, AKS resource id)
          host: https://ABCD.gr7.eu-west-1.eks.amazonaws.com
          ca_cert: /etc/cordon/prod-1-ca.crt
          eks_cluster: prod-1        # a token minted from the AWS credential chain (STS)
          region: eu-west-1
        gke-1: {host: "https://34.0.0.1", ca_cert: /etc/cordon/gke-1-ca.crt, gke: true}
        aks-1: {kubeconfig: /etc/cordon/aks-1.kubeconfig, context: aks-1-admin}

With ``clusters``, a detection whose layout names a cluster is answered only through that
cluster's entry: a cluster not listed is refused (:class:`KubernetesConfigError` naming
``kubernetes.clusters.<name>``), never answered through another cluster's credentials.

Raises :class:`KubernetesConfigError` naming ``kubernetes.<field>`` for an unknown key or a value of
the wrong type, and for ``in_cluster`` together with ``kubeconfig`` / ``context``.
"""

from __future__ import annotations

from typing import Any

from cordon.config import ConfigError

#: How to reach one cluster (the section itself, or an entry of ``clusters``)
CLUSTER_FIELDS: dict[str, type] = {"kubeconfig": str, "context": str, "in_cluster": bool, "host": str,
                                   "ca_cert": str, "eks_cluster": str, "region": str, "gke": bool}
FIELDS: dict[str, type] = {**CLUSTER_FIELDS, "service_account": str, "act_in_kube_system": bool, "clusters": dict}


class KubernetesConfigError(ConfigError):
    """A ``kubernetes:`` section that cannot be used; the message names the field."""


def kubernetes_section(raw: dict[str, Any] | None) -> dict[str, Any]:
    """The checked ``kubernetes:`` section of a parsed ``cordon.yaml`` (``{}`` when absent): the
    ``cloud`` parameters of :func:`cordon.providers.kubernetes.clients.kubernetes_clients`."""
    section = (raw or {}).get("kubernetes")
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise KubernetesConfigError("kubernetes: expected a mapping")
    _check(section, FIELDS, "kubernetes")
    for name, entry in (section.get("clusters") or {}).items():
        if not isinstance(entry, dict):
            raise KubernetesConfigError(f"kubernetes.clusters.{name}: expected a mapping")
        _check(entry, CLUSTER_FIELDS, f"kubernetes.clusters.{name}")
    return dict(section)


def _check(entry: dict[str, Any], fields: dict[str, type], where: str) -> None:
    for key, value in entry.items():
        if key not in fields:
            raise KubernetesConfigError(f"{where}.{key}: unknown field (known: {', '.join(fields)})")
        if not isinstance(value, fields[key]):
            raise KubernetesConfigError(f"{where}.{key}: expected {fields[key].__name__}")
    if entry.get("in_cluster") and ("kubeconfig" in entry or "context" in entry):
        raise KubernetesConfigError(f"{where}.in_cluster: not together with kubeconfig / context")
    if (entry.get("eks_cluster") or entry.get("gke")) and not entry.get("host"):
        raise KubernetesConfigError(f"{where}.host: required with eks_cluster / gke (the API server's URL)")


def cluster_entry(section: dict[str, Any], cluster: str | None) -> dict[str, Any]:
    """The ``cloud`` parameters for ``cluster`` (the detection's ``account_uid``): its entry of
    ``clusters`` with the section's ``service_account``; the section itself (without ``clusters``)
    when there is no ``clusters`` or the detection names no cluster. Raises
    :class:`KubernetesConfigError` naming ``kubernetes.clusters.<cluster>`` when ``clusters`` is set
    and does not list it."""
    clusters = section.get("clusters") or {}
    own = {k: v for k, v in section.items() if k in ("service_account",)}
    if clusters and cluster:
        if cluster not in clusters:
            raise KubernetesConfigError(f"kubernetes.clusters.{cluster}: not configured; Cordon does not answer a "
                                        f"cluster through another's credentials (configured: {', '.join(clusters)})")
        return {**own, **clusters[cluster]}
    return {k: v for k, v in section.items() if k != "clusters"}
