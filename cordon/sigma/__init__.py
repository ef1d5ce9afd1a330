"""Sigma detection engine: pySigma parses the rules, Cordon evaluates them over event dicts.

Public API::

    from cordon.sigma import RuleSet, SigmaMatch, SigmaRuleError

    rs = RuleSet.load("cordon/providers/aws/rules")          # directory (recursive *.yml) or file
    rs = RuleSet.from_yaml(text, path="<inline>")
    rs.rules                                        # list[CompiledRule]
    rs.match(event, product="aws", service="cloudtrail")  # -> list[SigmaMatch]

See :mod:`cordon.sigma.engine` for the evaluation semantics (Sigma specification v2).
"""

from cordon.sigma.engine import CompiledRule, RuleSet, SigmaMatch, SigmaRuleError

__all__ = ["CompiledRule", "RuleSet", "SigmaMatch", "SigmaRuleError"]
