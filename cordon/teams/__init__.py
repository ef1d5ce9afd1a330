"""Approval in Microsoft Teams (issue 18): verifying an ``adaptiveCard/action`` invoke
(:mod:`cordon.teams.verify`), the approval card (:mod:`cordon.teams.card`), the connector calls
that post and update it (:mod:`cordon.teams.client`) and the bot endpoint (:mod:`cordon.teams.server`).

A verified click becomes a :class:`cordon.slack.verify.Interaction` whose user is
``teams:<Entra object id>`` and goes to the same decider as a Slack click
(:func:`cordon.approvals.decide.make_decider`), so both channels share one policy and one quorum.
"""

import warnings

# the SDK's import announces an HTML widget policy Cordon does not use; keep it off responders' terminals
warnings.filterwarnings("ignore", message=r".*HtmlWidgetSecurityPolicy.*")
