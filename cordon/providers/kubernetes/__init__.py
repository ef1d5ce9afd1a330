"""Kubernetes: API server audit Events (Sigma logsource ``product: kubernetes, service: audit``) in
the layouts collectors deliver them (plain, EKS CloudWatch Logs subscription, GKE Cloud Audit Log,
AKS diagnostic records).

Modules: :mod:`.events` (the one normaliser of layouts), :mod:`.shapes` (classification),
:mod:`.detections` (the parser).
"""

from __future__ import annotations

from typing import Any

from cordon.providers import Provider, Source


class KubernetesProvider(Provider):
    """The Kubernetes provider (see the package docstring)."""

    name = "kubernetes"
    title = "Kubernetes"
    actions_module = "cordon.providers.kubernetes.actions"
    shapes_module = "cordon.providers.kubernetes.shapes"
    grants_module = "cordon.providers.kubernetes.grants"
    #: before Google Cloud (20): a GKE entry is a Cloud Audit Log entry too
    classify_order = 15
    config_section = True  # kubernetes: kubeconfig, context, in_cluster, service_account, clusters
    #: the detection's cluster (its ``account_uid``) reaches :meth:`clients` as ``account_id``
    clients_per_account = True
    detection_sources = ("k8s_audit",)
    credential_kinds = {
        "k8s_role_binding": "uid = clusterrolebindings/NAME or namespaces/NS/rolebindings/NAME",
        "k8s_sa_token": "uid = namespaces/NS/serviceaccounts/NAME/token",
        "k8s_csr": "uid = certificatesigningrequests/NAME[/approval]",
        "k8s_aws_auth": "uid = namespaces/kube-system/configmaps/aws-auth",
        "k8s_service_account": "uid = namespaces/NS/serviceaccounts/NAME",
        "k8s_secret": "uid = namespaces/NS/secrets/NAME",
    }
    credential_phrases = {
        "k8s_role_binding": ("Role binding created", "for"),
        "k8s_sa_token": ("Service-account token requested", "for"),
        "k8s_csr": ("Certificate signing request", "for"),
        "k8s_aws_auth": ("aws-auth ConfigMap edited", "by"),
        "k8s_service_account": ("New service account", ""),
        "k8s_secret": ("Secret created", "by"),
    }

    @property
    def sources(self) -> tuple[Source, ...]:
        from cordon.providers.kubernetes.detections import detections_from_k8s_audit, view

        return (Source("k8s_audit", detections_from_k8s_audit, sigma=("kubernetes", "audit", "application"),
                       view=view),)

    def rule_problem(self, sigma_rule: Any) -> str | None:
        """:func:`cordon.providers.kubernetes.rules_check.rule_problem`."""
        from cordon.providers.kubernetes.rules_check import rule_problem

        return rule_problem(sigma_rule)

    def clients(self, cloud: dict[str, Any]) -> Any:
        """:func:`cordon.providers.kubernetes.clients.kubernetes_clients` with ``cloud``; when it
        names no cluster (``host``, ``kubeconfig``, ``in_cluster``), ``cordon.yaml``'s ``kubernetes:``
        section does: the entry of ``clusters`` for ``cloud["account_id"]`` (the detection's cluster),
        else the section itself (:func:`cordon.providers.kubernetes.config.cluster_entry`)."""
        from cordon.providers.kubernetes.clients import kubernetes_clients

        if not any(k in cloud for k in ("host", "kubeconfig", "in_cluster")):
            from cordon.config import load_config
            from cordon.providers.kubernetes.config import cluster_entry, kubernetes_section

            cloud = {**cluster_entry(kubernetes_section(load_config().raw), cloud.get("account_id")), **cloud}
        return kubernetes_clients(cloud)

    def check_config(self, config: Any) -> str | None:
        """The ``kubernetes:`` section (:func:`cordon.providers.kubernetes.config.kubernetes_section`);
        raises its ``KubernetesConfigError`` naming ``kubernetes.<field>``."""
        from cordon.providers.kubernetes.config import kubernetes_section

        section = kubernetes_section(config.raw)
        if not section:
            return None
        return "Kubernetes in-cluster" if section.get("in_cluster") else \
            f"Kubernetes context {section.get('context') or '(current)'}"

    @staticmethod
    def acts_in_kube_system() -> bool:
        """``kubernetes.act_in_kube_system`` of the ``cordon.yaml`` in force (default false)."""
        from cordon.config import load_config
        from cordon.providers.kubernetes.config import kubernetes_section

        return bool(kubernetes_section(load_config().raw).get("act_in_kube_system"))

    def guard(self, detection: Any, clients: Any, me: str | None,
              enrichment: dict[str, Any] | None = None) -> str | None:
        """Refuse a ``system:``-prefixed binding, a binding whose subjects include a ``system:``
        principal or group, a ``kube-system`` ServiceAccount or Cordon's own ServiceAccount (``me``, as a
        binding's subject or as the ServiceAccount itself),
        and any object in ``kube-system`` unless ``kubernetes.act_in_kube_system`` is true in
        ``cordon.yaml`` (:meth:`acts_in_kube_system`)."""
        cred = detection.credential
        if cred is None or not cred.uid:
            return None
        name = cred.uid.rsplit("/", 1)[-1]
        if name.startswith("system:"):
            return f"{cred.uid} is a system: binding (Kubernetes' own); Cordon never touches it"
        if cred.uid.startswith("namespaces/kube-system/") and not self.acts_in_kube_system():
            return (f"{cred.uid} is in kube-system; Cordon does not act there unless cordon.yaml says "
                    "kubernetes.act_in_kube_system: true")
        if cred.kind in ("k8s_service_account", "k8s_sa_token") and me:
            parts = cred.uid.split("/")
            if len(parts) >= 4 and parts[0] == "namespaces" and parts[2] == "serviceaccounts" \
                    and f"system:serviceaccount:{parts[1]}:{parts[3]}" == me:
                return f"{cred.uid} is Cordon's own ServiceAccount {me}"
        for subject in cred.attributes.get("subjects") or []:
            if not isinstance(subject, dict):
                continue
            sname = str(subject.get("name") or "")
            principal = (f"system:serviceaccount:{subject.get('namespace')}:{sname}"
                         if subject.get("kind") == "ServiceAccount" else sname)
            if sname.startswith("system:") or subject.get("namespace") == "kube-system":
                return f"{cred.uid} binds the system principal {principal}; Cordon never touches system: principals"
            if me and principal == me:
                return f"{cred.uid} binds Cordon's own ServiceAccount {me}"
        return None
