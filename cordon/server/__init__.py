"""Cordon's HTTP server: Slack interactivity, the detection webhook, health."""

from cordon.server.app import create_app, notify_refusal

__all__ = ["create_app", "notify_refusal"]
