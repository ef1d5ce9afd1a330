"""Field normalisation: one declaration that rewrites the values of some fields alike in the events a
rule set is evaluated on and in the rules' own values, so that spellings a log writes differently
from its documentation still match (the idea of a pySigma processing pipeline, declared as data).

A :class:`FieldNormalisation` names the fields (dotted paths, as rules write them) and the
rewrites (Python regular expressions and their replacements, applied in order to the text, then
surrounding whitespace trimmed). It gives:

* :meth:`FieldNormalisation.text`: the canonical spelling of one value;
* :meth:`FieldNormalisation.event`: a copy of an event whose values at those fields are canonical
  (copy on write: objects and lists on the way are copied, nothing else; lists met on the way are
  walked element-wise, as the engine's dotted paths are; a literal dotted key is rewritten too);
* :meth:`FieldNormalisation.pipeline`: a pySigma ``ProcessingPipeline`` (one ``ProcessingItem`` with
  :class:`CanonicalSpelling` and an ``IncludeFieldCondition`` on the fields) that rewrites the
  rules' string values of those fields the same way. Wildcards stay wildcards: each plain run of a
  value is rewritten, and only the value's own ends are trimmed.

:meth:`cordon.sigma.RuleSet.match` takes one as ``normalise=`` and applies both sides; a provider
declares it once per record kind (:class:`cordon.providers.Source`). Regular expression values
(``|re``) and keyword (field-less) detections are not rewritten: they see the canonical event.

:data:`NAME_SPELLING` is the rewrite for names of operations as people type and logs print them:
runs of whitespace become one space, and a hyphen-minus, hyphen, non-breaking hyphen, figure
dash, en dash, em dash, horizontal bar or minus sign, with the whitespace around it, becomes one
``-`` (so "Update application – Certificates and secrets management " and "Update application -
Certificates and secrets management" are both "Update application-Certificates and secrets
management"), and a trailing period goes (the unified audit log writes "Create application password
for user." where Entra's audit log writes no period). A hyphen inside a word (``host-name``) is
unchanged.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from sigma.processing.conditions import IncludeFieldCondition
from sigma.processing.pipeline import ProcessingItem, ProcessingPipeline
from sigma.processing.transformations.base import StringValueTransformation
from sigma.rule import SigmaDetection, SigmaRule
from sigma.types import SigmaString

_DASH_CHARS = "\u002d\u2010\u2011\u2012\u2013\u2014\u2015\u2212"

#: ``(regular expression, replacement)`` pairs for operation names (see the module docstring).
NAME_SPELLING: tuple[tuple[str, str], ...] = (
    (r"\s+", " "),
    (rf" ?[{_DASH_CHARS}] ?", "-"),
    (r" ?\.+ ?$", ""),
)


#: How many distinct values a :class:`FieldNormalisation` remembers the canonical spelling of.
_SEEN_MAX = 4096
_MISSING: Any = object()


@dataclass(frozen=True, eq=True)
class FieldNormalisation:
    """Rewrites applied alike to events and rules for ``fields`` (see the module docstring).

    ``fields``: dotted field names as the rules name them (``activityDisplayName``,
    ``operationName.value``, ``targetResources.modifiedProperties.displayName``); ``rewrites``:
    ``(regex, replacement)`` pairs for :func:`re.sub`, in order; ``trim``: strip the value's
    surrounding whitespace after the rewrites. Hashable, so a rule set caches its rewritten rules
    per normalisation.
    """

    fields: tuple[str, ...]
    rewrites: tuple[tuple[str, str], ...] = NAME_SPELLING
    trim: bool = True
    _compiled: tuple[tuple[re.Pattern[str], str], ...] = field(init=False, repr=False, compare=False, hash=False)
    _seen: dict[str, str] = field(init=False, repr=False, compare=False, hash=False)
    _hash: int = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_compiled", tuple((re.compile(p), r) for p, r in self.rewrites))
        object.__setattr__(self, "_seen", {})  # value -> canonical spelling (names repeat: a few hundred)
        object.__setattr__(self, "_hash", hash((self.fields, self.rewrites, self.trim)))

    def __hash__(self) -> int:  # asked on every match (the rule set's partition key): computed once
        return self._hash

    def rewrite(self, text: str) -> str:
        """``text`` with the rewrites applied (not trimmed): what each plain run of a rule's value gets."""
        for pattern, replacement in self._compiled:
            text = pattern.sub(replacement, text)
        return text

    def text(self, value: str) -> str:
        """The canonical spelling of one value: the rewrites, then trimmed when ``trim`` (remembered for
        up to :data:`_SEEN_MAX` distinct values, then forgotten all at once)."""
        out = self._seen.get(value)
        if out is None:
            out = self.rewrite(value)
            out = out.strip() if self.trim else out
            if len(self._seen) >= _SEEN_MAX:
                self._seen.clear()
            self._seen[value] = out
        return out

    @cached_property
    def _trie(self) -> dict[str, tuple[bool, dict[str, Any]]]:
        """The fields as a tree: ``key -> (a field ends here, the keys below)``."""
        root: dict[str, Any] = {}
        for name in self.fields:
            node = root
            parts = name.split(".")
            for i, part in enumerate(parts):
                leaf, children = node.get(part, (False, {}))
                node[part] = (leaf or i == len(parts) - 1, children)
                node = children
        return root

    @cached_property
    def _dotted(self) -> tuple[str, ...]:
        return tuple(f for f in self.fields if "." in f)

    def event(self, event: dict[str, Any]) -> dict[str, Any]:
        """A copy of ``event`` with every string value at :attr:`fields` in its canonical spelling;
        ``event`` itself is returned when nothing changes. Never raises; other values are kept."""
        out = self._apply(event, self._trie)
        for name in self._dotted:  # a literal dotted key (the engine reads it first)
            if name in out:
                new = self._value(out[name])
                if new is not out[name]:
                    out = out if out is not event else dict(event)
                    out[name] = new
        return out

    def _value(self, value: Any) -> Any:
        """A value at a field: a string rewritten, a list's strings rewritten; a copy when changed."""
        if type(value) is str:
            new = self.text(value)
            return value if new == value else new
        if type(value) is list:
            items = [self._value(v) for v in value]
            return value if all(a is b for a, b in zip(items, value, strict=True)) else items
        return value

    def _apply(self, node: Any, trie: dict[str, tuple[bool, dict[str, Any]]]) -> Any:
        """``node`` with the fields of ``trie`` below it rewritten (lists walked element-wise): a copy
        of each object and list on the way to a change, ``node`` itself when nothing changed."""
        if type(node) is list:
            items = [self._apply(v, trie) for v in node]
            return node if all(a is b for a, b in zip(items, node, strict=True)) else items
        if type(node) is not dict:
            return node
        copied = None
        for key, (leaf, children) in trie.items():
            child = node.get(key, _MISSING)
            if child is _MISSING:
                continue
            new = self._value(child) if leaf else child
            if children:
                new = self._apply(new, children)
            if new is not child:
                copied = copied if copied is not None else dict(node)
                copied[key] = new
        return node if copied is None else copied

    def touches(self, rule: SigmaRule) -> bool:
        """Whether a detection item of ``rule`` names one of :attr:`fields`."""
        wanted = set(self.fields)

        def walk(detection: SigmaDetection) -> bool:
            for item in detection.detection_items:
                if isinstance(item, SigmaDetection):
                    if walk(item):
                        return True
                elif item.field in wanted:
                    return True
            return False

        return any(walk(d) for d in rule.detection.detections.values())

    def pipeline(self) -> ProcessingPipeline:
        """A new pySigma ``ProcessingPipeline`` rewriting the rules' string values of :attr:`fields`
        (:class:`CanonicalSpelling`). Pipelines keep per-run state: make one per use."""
        return ProcessingPipeline(
            name="cordon field normalisation",
            items=[ProcessingItem(CanonicalSpelling(normalisation=self),
                                  field_name_conditions=[IncludeFieldCondition(fields=list(self.fields))])],
        )

    def apply_to_rule(self, rule: SigmaRule) -> SigmaRule:
        """A rewritten deep copy of ``rule`` (``rule`` itself is left as it was)."""
        return self.pipeline().apply(copy.deepcopy(rule))  # type: ignore[return-value]


@dataclass
class CanonicalSpelling(StringValueTransformation):
    """pySigma value transformation: a Sigma string's plain runs rewritten by
    :meth:`FieldNormalisation.rewrite`, its first run's leading and last run's trailing whitespace
    trimmed (when the value starts / ends with plain text and ``trim``); wildcards kept."""

    normalisation: FieldNormalisation | None = None

    def apply_string_value(self, field: str | None, val: SigmaString) -> SigmaString | None:
        """The rewritten value, or ``None`` (keep it) when nothing changes."""
        norm = self.normalisation
        if norm is None:
            return None
        parts: list[Any] = []
        for part in val.s:
            if isinstance(part, str) and parts and isinstance(parts[-1], str):
                parts[-1] += part
            else:
                parts.append(part)
        parts = [norm.rewrite(p) if isinstance(p, str) else p for p in parts]
        if norm.trim and parts and isinstance(parts[0], str):
            parts[0] = parts[0].lstrip()
        if norm.trim and parts and isinstance(parts[-1], str):
            parts[-1] = parts[-1].rstrip()
        parts = [p for p in parts if p != ""]
        if parts == list(val.s):
            return None
        out = val.__class__()
        out.s = parts
        return out


__all__ = ["NAME_SPELLING", "CanonicalSpelling", "FieldNormalisation"]
