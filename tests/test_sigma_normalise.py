"""Field normalisation in the Sigma engine (``cordon.sigma.normalise``): one declaration rewrites the
named fields alike in events and in rules (pySigma's own processing pipeline on the rule side),
whatever the cloud. Rules here are inline; nothing is mocked."""

from __future__ import annotations

import copy

from cordon.sigma import NAME_SPELLING, FieldNormalisation, RuleSet

NAMES = FieldNormalisation(fields=("op", "nested.op", "items.name", "a.b"))

RULES = """
title: exact
id: 00000000-0000-4000-8000-000000000001
logsource: {product: p, service: s}
detection:
  sel:
    op: Update application – Certificates and secrets management
  condition: sel
---
title: wildcards
id: 00000000-0000-4000-8000-000000000002
logsource: {product: p, service: s}
detection:
  sel:
    nested.op|startswith: 'Add member '
    nested.op|endswith: 'role'
  condition: sel
---
title: in a list
id: 00000000-0000-4000-8000-000000000003
logsource: {product: p, service: s}
detection:
  sel:
    items.name: Federated Credentials
  condition: sel
---
title: field not normalised
id: 00000000-0000-4000-8000-000000000004
logsource: {product: p, service: s}
detection:
  sel:
    other: a – b
  condition: sel
---
title: regex left alone
id: 00000000-0000-4000-8000-000000000005
logsource: {product: p, service: s}
detection:
  sel:
    op|re: '^Remove – '
  condition: sel
---
title: negated
id: 00000000-0000-4000-8000-000000000006
logsource: {product: p, service: s}
detection:
  sel:
    kind: x
  filter:
    op: Skip — me
  condition: sel and not filter
"""


def ids(matches):
    return [m.id[-1] for m in matches]


def test_text_trims_collapses_and_unifies_dashes():
    n = FieldNormalisation(fields=("x",))
    assert n.rewrites == NAME_SPELLING
    for spelling in ("Update application – Certificates and secrets management ",
                     " Update application - Certificates and secrets management",
                     "Update application—Certificates  and secrets management",
                     "Update application \u2212 Certificates and secrets management\u00a0"):
        assert n.text(spelling) == "Update application-Certificates and secrets management", spelling
    assert n.text("host-name") == "host-name" and n.text("Add user") == "Add user"


def test_event_is_copied_on_write_and_left_alone():
    event = {"op": "A – B ", "nested": {"op": " x"}, "items": [{"name": "n "}, {"other": 1}], "keep": {"z": 1},
             "a.b": "literal – key"}
    before = copy.deepcopy(event)
    out = NAMES.event(event)
    assert event == before
    assert out == {"op": "A-B", "nested": {"op": "x"}, "items": [{"name": "n"}, {"other": 1}], "keep": {"z": 1},
                   "a.b": "literal-key"}
    assert out["keep"] is event["keep"] and out["items"][1] is event["items"][1]
    plain = {"op": "already", "nested": {"op": "fine"}, "n": 3}
    assert NAMES.event(plain) is plain
    assert NAMES.event({"op": 5, "nested": "not an object", "items": "x"}) == {"op": 5, "nested": "not an object",
                                                                                "items": "x"}


def test_both_sides_rewritten_when_the_source_declares_it():
    rules = RuleSet.from_yaml(RULES)
    event = {"op": "Update application - Certificates and secrets management ",
             "nested": {"op": "Add  member to role "}, "items": [{"name": " Federated  Credentials"}]}
    assert ids(rules.match(event, product="p", service="s")) == []  # exact without the normalisation
    assert ids(rules.match(event, product="p", service="s", normalise=NAMES)) == ["1", "2", "3"]
    # the rules themselves are unchanged for callers that give no normalisation
    assert ids(rules.match({"op": "Update application – Certificates and secrets management"},
                           product="p", service="s")) == ["1"]


def test_fields_not_declared_regexes_and_negations():
    rules = RuleSet.from_yaml(RULES)
    assert ids(rules.match({"other": "a - b"}, product="p", service="s", normalise=NAMES)) == []
    assert ids(rules.match({"other": "a – b"}, product="p", service="s", normalise=NAMES)) == ["4"]
    # a regular expression sees the canonical event and is not rewritten itself
    assert ids(rules.match({"op": "Remove – it"}, product="p", service="s")) == ["5"]
    assert ids(rules.match({"op": "Remove – it"}, product="p", service="s", normalise=NAMES)) == []
    # the filter's value is rewritten too: every spelling of the filtered name is filtered
    for op in ("Skip - me", "Skip—me ", "Skip – me"):
        assert ids(rules.match({"kind": "x", "op": op}, product="p", service="s", normalise=NAMES)) == [], op
    assert ids(rules.match({"kind": "x", "op": "other"}, product="p", service="s", normalise=NAMES)) == ["6"]


def test_rewritten_rules_are_compiled_once_and_keep_their_identity():
    rules = RuleSet.from_yaml(RULES)
    event = {"op": "Update application - Certificates and secrets management"}
    first = rules.match(event, product="p", service="s", normalise=NAMES)
    again = rules.match(dict(event), product="p", service="s", normalise=FieldNormalisation(fields=NAMES.fields))
    assert first == again and first[0].title == "exact" and first[0].id.endswith("1")
    assert len(rules._rewritten) == 5  # every rule naming a declared field: all but "field not normalised"
    untouched = next(r for r in rules.rules if r.title == "field not normalised")
    assert not NAMES.touches(untouched.sigma_rule)
    original = next(r for r in rules.rules if r.title == "exact")
    item = original.sigma_rule.detection.detections["sel"].detection_items[0]
    assert item.value[0].s == ["Update application – Certificates and secrets management"]
