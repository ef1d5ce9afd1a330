"""Cordon's Slack surface: approval messages, the Web API, inbound requests and ``/cordon``.

* :mod:`cordon.slack.blocks`: Block Kit builders (the approval message, status and summary
  updates, the Deny reason dialog) and the action / block IDs they carry.
* :mod:`cordon.slack.render`: the registry of per-action enrichment renderers (``@renderer``).
* :mod:`cordon.slack.mrkdwn`: escaping, inline code, clipping and dates in Slack's mrkdwn.
* :mod:`cordon.slack.client`: the Web API client with retries, ``chat.postMessage`` / ``chat.update``.
* :mod:`cordon.slack.verify`: request signature check and parsing of clicks and dialog submissions.
* :mod:`cordon.slack.commands` and :mod:`cordon.slack.modal`: the ``/cordon`` slash command and its
  run-a-playbook modal.

Who may approve, and what a decision does, is :mod:`cordon.approvals`.
"""

from cordon.slack.blocks import approval_blocks, fallback_text, status_blocks, summary_blocks
from cordon.slack.client import make_client, post_approval, update_message, web_client
from cordon.slack.mrkdwn import escape
from cordon.slack.verify import Interaction, parse_interaction, verify_request

__all__ = [
    "Interaction",
    "approval_blocks",
    "escape",
    "fallback_text",
    "make_client",
    "parse_interaction",
    "post_approval",
    "status_blocks",
    "summary_blocks",
    "update_message",
    "verify_request",
    "web_client",
]
