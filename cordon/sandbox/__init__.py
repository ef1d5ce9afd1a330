"""Local stand-ins for the clouds and Slack: the embedded default (``cordon respond --sandbox``) and
the tests' fixtures. A plug-in, installed by the ``sandbox`` extra: it registers its stand-ins under
the entry point groups of :mod:`cordon.standins` (``cordon.standins``: ``aws``, ``azure``, ``gcp``;
``cordon.clients``: ``aws-standins``), and nothing in the core imports it.

Importing it without the extra's dependencies (moto's server, trustme) raises ``ImportError``
naming the missing one, so ``--sandbox`` can say which extra to install.
"""

from __future__ import annotations

import importlib.util

from cordon.standins import StandIns

#: What the stand-ins import when they start (the ``sandbox`` extra).
REQUIRES = ("moto", "trustme")

for _needed in REQUIRES:
    if importlib.util.find_spec(_needed) is None:
        raise ImportError(f"No module named '{_needed}'", name=_needed)


def _aws():
    from cordon.sandbox.aws import AwsSandbox

    return AwsSandbox()


def _gcp():
    from cordon.sandbox.gcp import GcpSandbox

    return GcpSandbox()


def _azure():
    from cordon.sandbox.azure import AzureSandbox

    return AzureSandbox()


class Sandboxes(StandIns):
    """This package's stand-ins, one per provider, started on first use: ``for_provider("aws")`` is
    an :class:`~cordon.sandbox.aws.AwsSandbox`, ``"gcp"`` a :class:`~cordon.sandbox.gcp.GcpSandbox`,
    ``"azure"`` an :class:`~cordon.sandbox.azure.AzureSandbox` (what the entry points register; the
    tests use this class directly). Raises :class:`cordon.standins.StandInsMissing` for another
    provider."""

    def __init__(self) -> None:
        super().__init__({"aws": _aws, "gcp": _gcp, "azure": _azure})
