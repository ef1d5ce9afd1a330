"""Local stand-ins for the clouds and Slack: the embedded default and the tests' fixtures."""

from __future__ import annotations

from typing import Any


class Sandboxes:
    """One sandbox per provider, started on first use: ``for_provider("aws")`` is an
    :class:`~cordon.sandbox.aws.AwsSandbox`, ``for_provider("gcp")`` a
    :class:`~cordon.sandbox.gcp.GcpSandbox`. Raises ``ValueError`` for a provider with none."""

    def __init__(self) -> None:
        self._started: dict[str, Any] = {}

    def for_provider(self, provider: str) -> Any:
        if provider not in self._started:
            if provider == "aws":
                from cordon.sandbox.aws import AwsSandbox

                self._started[provider] = AwsSandbox().start()
            elif provider == "gcp":
                from cordon.sandbox.gcp import GcpSandbox

                self._started[provider] = GcpSandbox().start()
            elif provider == "azure":
                from cordon.sandbox.azure import AzureSandbox

                self._started[provider] = AzureSandbox().start()
            else:
                raise ValueError(f"no sandbox for provider '{provider}'")
        return self._started[provider]

    def describe(self) -> str:
        """``aws at http://127.0.0.1:PORT, ...`` for the sandboxes started so far."""
        return ", ".join(f"{p} at {getattr(s, 'endpoint_url', None) or getattr(s, 'url', '?')}"
                         for p, s in self._started.items()) or "none started"

    def stop(self) -> None:
        for sb in self._started.values():
            sb.stop()
        self._started.clear()
