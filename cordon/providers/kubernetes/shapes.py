"""Which records are Kubernetes audit Events (called by :func:`cordon.detections.intake.classify`):
a plain ``audit.k8s.io`` Event, an AKS ``kube-audit`` / ``kube-audit-admin`` diagnostic record, a
GKE Cloud Audit Log entry whose ``protoPayload.serviceName`` is ``k8s.io`` (asked before Google
Cloud's shapes, which would take it as a GCP audit entry); and containers of Events, an
``EventList`` and an EKS CloudWatch Logs subscription payload (:func:`unpack`). Layouts:
:mod:`cordon.providers.kubernetes.events`."""

from __future__ import annotations

from typing import Any

from cordon.providers.kubernetes.events import layout, unpack

__all__ = ["SHAPES", "classify", "unpack"]

SHAPES = ("a Kubernetes audit Event (audit.k8s.io/v1; AKS kube-audit properties.log; GKE protoPayload "
          "serviceName k8s.io; EventList; EKS CloudWatch Logs subscription logEvents)")


def classify(record: dict[str, Any]) -> str | None:
    """``k8s_audit`` for a single-Event layout, else ``None``."""
    return "k8s_audit" if layout(record) else None
