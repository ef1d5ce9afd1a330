"""Human approval of containment plans: who may approve (:mod:`cordon.approvals.policy`), the
decision on a click (:mod:`cordon.approvals.decide`), the gate a run waits at
(:mod:`cordon.approvals.gate`), expiry and escalation (:mod:`cordon.approvals.expiry`), the
outbox of messages to post (:mod:`cordon.approvals.outbox`) and the console fallback
(:mod:`cordon.approvals.console`). The Slack side (Block Kit, Web API, signed requests, ``/cordon``)
is :mod:`cordon.slack`."""
