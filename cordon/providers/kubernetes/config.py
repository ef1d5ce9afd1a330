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

Raises :class:`KubernetesConfigError` naming ``kubernetes.<field>`` for an unknown key or a value of
the wrong type, and for ``in_cluster`` together with ``kubeconfig`` / ``context``.
"""

from __future__ import annotations

from typing import Any

from cordon.config import ConfigError

FIELDS: dict[str, type] = {"kubeconfig": str, "context": str, "in_cluster": bool, "service_account": str,
                           "act_in_kube_system": bool}


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
    for key, value in section.items():
        if key not in FIELDS:
            raise KubernetesConfigError(f"kubernetes.{key}: unknown field (known: {', '.join(FIELDS)})")
        if not isinstance(value, FIELDS[key]):
            raise KubernetesConfigError(f"kubernetes.{key}: expected {FIELDS[key].__name__}")
    if section.get("in_cluster") and ("kubeconfig" in section or "context" in section):
        raise KubernetesConfigError("kubernetes.in_cluster: not together with kubeconfig / context")
    return dict(section)
