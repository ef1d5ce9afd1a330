"""Sigma detection engine: pySigma parses the rules, Cordon evaluates them over event dicts.

Public API::

    from cordon.sigma import RuleSet, SigmaMatch, SigmaRuleError

    rs = RuleSet.load("cordon/providers/aws/rules")          # directory (recursive *.yml) or file
    rs = RuleSet.from_yaml(text, path="<inline>")
    rs.rules                                        # list[CompiledRule]
    rs.match(event, product="aws", service="cloudtrail")  # -> list[SigmaMatch]
    rs.match(event, product="azure", service="auditlogs",
             normalise=FieldNormalisation(fields=("activityDisplayName",)))  # both sides canonical

See :mod:`cordon.sigma.engine` for the evaluation semantics (Sigma specification v2) and
:mod:`cordon.sigma.normalise` for field normalisation.
"""

from cordon.sigma.engine import CompiledRule, RuleSet, SigmaMatch, SigmaRuleError
from cordon.sigma.normalise import NAME_SPELLING, FieldNormalisation

__all__ = ["NAME_SPELLING", "CompiledRule", "FieldNormalisation", "RuleSet", "SigmaMatch", "SigmaRuleError"]
