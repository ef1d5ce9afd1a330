"""Cordon: a SOAR-style incident-response playbook runner for cloud credential persistence.

Detections (CloudTrail events matched by Sigma rules, GuardDuty and Security Hub findings) are
normalised to :class:`cordon.detections.model.Detection`, grouped into cases, and answered by a
playbook run as the Prefect flow in ``cordon/flows/respond.py``: enrich, guard, plan, approve, contain,
verify, with every step in the hash-chained audit ledger (:mod:`cordon.audit`).
"""

__version__ = "0.1.0"

#: The distribution's name on the package index (``pip install cordon-ir``): ``cordon`` there is
#: another project. The import package stays ``cordon``.
DISTRIBUTION = "cordon-ir"
