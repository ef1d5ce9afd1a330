"""Sigma rule evaluation over event dicts.

Rules are parsed with pySigma (``sigma.collection.SigmaCollection``, ``SigmaDetectionItem``,
its modifiers and its condition parse tree) and compiled once by Cordon into plain Python
closures that evaluate a detection against a decoded JSON event (a ``dict``). pySigma has no
in-Python evaluator; the evaluation semantics implemented here follow the Sigma specification
v2 (``sigma-specification``: rules, modifiers appendix) as summarised below.

Values (field given):
    * strings match the whole field value, case-insensitively unless ``|cased``; ``*`` and ``?``
      are wildcards (``\\*``/``\\?`` escape them); ``contains``/``startswith``/``endswith`` add
      wildcards (done by pySigma);
    * numbers compare numerically (an event string that parses as a number compares too);
      booleans compare with booleans and with the strings ``"true"``/``"false"``;
    * ``null`` matches a missing field or a JSON ``null``;
    * ``|exists: true`` matches a field that is present and not ``null``;
    * ``|re`` is a Python ``re`` search (unanchored) with the ``i``/``m``/``s`` flags; with
      ``startswith`` it must match at the start of the value, with ``endswith`` at its end
      (pySigma pads the expression with ``.*`` for whole-value backends);
    * ``|cidr`` parses the event value with :mod:`ipaddress`; values that are not IP addresses
      (hostnames such as ``cloudformation.amazonaws.com``, anonymised ``211.9.016.253``) do not
      match;
    * ``|fieldref`` compares with the value of another field of the same event (case-insensitive
      for strings), alone or with ``startswith``/``endswith``/``contains``; an empty referenced
      value never satisfies the partial forms;
    * ``lt``/``lte``/``gt``/``gte``, ``neq``, ``windash``, ``base64``, ``base64offset``, ``wide``,
      ``utf16*`` and the timestamp-part modifiers are evaluated from the values pySigma produces.
      ``expand`` (placeholders that need a processing pipeline) is rejected.
    * A list of values is OR-linked unless ``|all``. An event value that is a list matches when
      any element matches.

Field normalisation: :meth:`RuleSet.match` takes a
:class:`~cordon.sigma.normalise.FieldNormalisation` (``normalise=``) that rewrites the values of
named fields alike in the event and in the rules (a pySigma processing pipeline applied to a copy
of each rule naming one of them), so spellings that differ only in whitespace or dashes compare
equal.

Keyword (field-less) detections match when any scalar value anywhere in the event matches.
Fields are dotted paths into nested objects (a literal dotted key is preferred when present;
lists met on the way are searched element-wise). Conditions support ``and``/``or``/``not``,
parentheses, ``1 of x*``, ``all of x*``, ``1 of them``, ``all of them``; a list of conditions is
OR-linked. Correlation rules, Sigma filters and the deprecated pipe (aggregation) syntax raise
:class:`SigmaRuleError`.
"""

from __future__ import annotations

import ipaddress
import logging
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from sigma.collection import SigmaCollection
from sigma.conditions import (
    ConditionAND,
    ConditionIdentifier,
    ConditionItem,
    ConditionNOT,
    ConditionOR,
    ConditionSelector,
)
from sigma.correlations import SigmaCorrelationRule
from sigma.exceptions import SigmaError, SigmaRuleLocation
from sigma.filters import SigmaFilter
from sigma.modifiers import (
    SigmaContainsModifier,
    SigmaEndswithModifier,
    SigmaExpandModifier,
    SigmaStartswithModifier,
    modifier_mapping,
    reverse_modifier_mapping,
)
from sigma.rule import SigmaDetection, SigmaDetectionItem, SigmaRule
from sigma.rule.base import SigmaYAMLLoader
from sigma.types import (
    CompareOperators,
    Placeholder,
    SigmaBool,
    SigmaCasedString,
    SigmaCIDRExpression,
    SigmaCompareExpression,
    SigmaExists,
    SigmaExpansion,
    SigmaFieldReference,
    SigmaNull,
    SigmaNumber,
    SigmaRegularExpression,
    SigmaString,
    SigmaTimestampPart,
    SpecialChars,
    TimestampPart,
)

from cordon.sigma.normalise import FieldNormalisation

__all__ = ["CompiledRule", "RuleSet", "SigmaMatch", "SigmaRuleError"]

Event = dict[str, Any]
Predicate = Callable[[Event], bool]
ValueMatcher = Callable[[Any], bool]

_MISSING: Any = object()
_TECHNIQUE_RE = re.compile(r"t\d{4}(?:\.\d{3})?")
# Modifiers pySigma knows whose values Cordon cannot evaluate without a processing pipeline.
_UNSUPPORTED_MODIFIERS = {"expand": "placeholders need a processing pipeline to be expanded"}
# pySigma exception class -> rule field it is about (for SigmaRuleError.field).
_ERROR_FIELDS = {
    "SigmaTitleError": "title",
    "SigmaIdentifierError": "id",
    "SigmaLevelError": "level",
    "SigmaStatusError": "status",
    "SigmaDateError": "date",
    "SigmaModifiedError": "modified",
    "SigmaDescriptionError": "description",
    "SigmaReferencesError": "references",
    "SigmaTagError": "tags",
    "SigmaAuthorError": "author",
    "SigmaFalsePositivesError": "falsepositives",
    "SigmaFieldsError": "fields",
    "SigmaRelatedError": "related",
    "SigmaLogsourceError": "logsource",
    "SigmaConditionError": "detection.condition",
    "SigmaDetectionError": "detection",
    "SigmaTaxonomyError": "taxonomy",
    "SigmaNameError": "name",
    "SigmaScopeError": "scope",
    "SigmaLicenseError": "license",
}


class SigmaRuleError(ValueError):
    """A Sigma rule that cannot be parsed or uses a feature Cordon does not evaluate.

    Attributes:
        path: the rule file (as given to :meth:`RuleSet.load`, or ``"<inline>"``).
        field: the offending rule field as a dotted path, e.g. ``detection.selection.eventName|foo``
            or ``detection.condition``; ``"<yaml>"`` for YAML syntax errors.
        reason: human readable cause.
        line: 1-based line in the file when known, else ``None``.

    ``str(err)`` is ``"<path>: field '<field>': <reason>"`` followed by ``" (line N)"`` when the
    line is known.
    """

    def __init__(self, path: str | Path, field: str, reason: str, line: int | None = None) -> None:
        self.path = str(path)
        self.field = field
        self.reason = reason
        self.line = line
        msg = f"{self.path}: field '{field}': {reason}"
        if line is not None:
            msg += f" (line {line})"
        super().__init__(msg)


@dataclass(frozen=True)
class SigmaMatch:
    """One rule that matched one event.

    ``technique_ids`` come from ATT&CK tags (``attack.t1098.001`` -> ``"T1098.001"``); ``tags`` are
    all tags as written (``namespace.name``); ``path`` is the rule file.
    """

    id: str
    title: str
    path: str
    level: str
    technique_ids: tuple[str, ...]
    tags: tuple[str, ...]
    author: str | None
    references: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class CompiledRule:
    """A pySigma rule compiled into a predicate.

    ``predicate(event) -> bool`` evaluates the detection; ``match`` is the :class:`SigmaMatch`
    reported when it is true; ``product``/``service``/``category`` come from the logsource
    (``None`` = not given); ``index`` is ``(field, values)`` when the rule can only match if the
    field (compared like a Sigma string, case-insensitively) equals one of ``values``.
    """

    match: SigmaMatch
    predicate: Predicate
    product: str | None
    service: str | None
    category: str | None
    index: tuple[str, frozenset[str]] | None
    sigma_rule: SigmaRule

    @property
    def id(self) -> str:
        return self.match.id

    @property
    def title(self) -> str:
        return self.match.title

    @property
    def path(self) -> str:
        return self.match.path

    def matches(self, event: Event) -> bool:
        """Evaluate the detection on ``event`` (no logsource check)."""
        return self.predicate(event)


# --------------------------------------------------------------------------------------------
# Event access
# --------------------------------------------------------------------------------------------


def _walk_path(cur: Any, parts: list[str], i: int) -> Any:
    """Follow ``parts[i:]`` into nested dicts; lists are searched element-wise (flattened)."""
    n = len(parts)
    while i < n:
        if isinstance(cur, dict):
            cur = cur.get(parts[i], _MISSING)
            if cur is _MISSING:
                return _MISSING
            i += 1
        elif isinstance(cur, list):
            found: list[Any] = []
            for element in cur:
                v = _walk_path(element, parts, i)
                if v is _MISSING:
                    continue
                if isinstance(v, list):
                    found.extend(v)
                else:
                    found.append(v)
            return found if found else _MISSING
        else:
            return _MISSING
    return cur


def _make_getter(field: str) -> Callable[[Event], Any]:
    """Return ``get(event) -> value | _MISSING`` for a (possibly dotted) field name."""
    if "." not in field:

        def get_plain(event: Event) -> Any:
            return event.get(field, _MISSING)

        return get_plain
    parts = field.split(".")
    if len(parts) == 2:
        a, b = parts

        def get2(event: Event) -> Any:
            v = event.get(field, _MISSING)
            if v is not _MISSING:
                return v
            cur = event.get(a)
            if isinstance(cur, dict):
                return cur.get(b, _MISSING)
            return _walk_path(cur, parts, 1) if isinstance(cur, list) else _MISSING

        return get2

    def get_n(event: Event) -> Any:
        v = event.get(field, _MISSING)
        if v is not _MISSING:
            return v
        return _walk_path(event, parts, 0)

    return get_n


def _as_str(v: Any) -> str | None:
    """Scalar event value as the string Sigma string values compare against (None: not comparable)."""
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    return None


def _as_number(v: Any) -> int | float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return v
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            return None
    return None


def _index_key(v: Any) -> str | None:
    s = _as_str(v)
    return None if s is None else s.lower()


def _leaves(value: Any) -> Iterator[Any]:
    """All scalar values (not None) of a nested event."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif v is not None:
            yield v


# --------------------------------------------------------------------------------------------
# Value matchers: Sigma value -> fn(scalar event value) -> bool
# --------------------------------------------------------------------------------------------


class _Unsupported(Exception):
    """Raised during compilation; converted into SigmaRuleError with the item's field."""


def _string_matcher(value: SigmaString) -> ValueMatcher:
    cased = isinstance(value, SigmaCasedString)
    parts = value.s
    if any(isinstance(p, Placeholder) for p in parts):
        raise _Unsupported("unsupported modifier 'expand': placeholders need a processing pipeline")
    norm: Callable[[str], str] = (lambda s: s) if cased else str.lower

    multi = SpecialChars.WILDCARD_MULTI
    plain = [p for p in parts if isinstance(p, str)]
    specials = [p for p in parts if not isinstance(p, str)]
    text = norm("".join(plain))
    if not specials:
        if cased:
            return lambda v: _as_str(v) == text
        return lambda v: (s := _as_str(v)) is not None and s.lower() == text

    if all(p is multi for p in specials) and len(plain) <= 1:
        starts = parts[0] is multi
        ends = parts[-1] is multi
        if len(parts) == 1:  # just "*": any comparable value
            return lambda v: _as_str(v) is not None
        if starts and ends and len(parts) == 3:
            return lambda v: (s := _as_str(v)) is not None and text in norm(s)
        if starts and len(parts) == 2:
            return lambda v: (s := _as_str(v)) is not None and norm(s).endswith(text)
        if ends and len(parts) == 2:
            return lambda v: (s := _as_str(v)) is not None and norm(s).startswith(text)

    pattern = "".join(re.escape(p) if isinstance(p, str) else (".*" if p is multi else ".") for p in parts)
    rx = re.compile(pattern, re.DOTALL | (0 if cased else re.IGNORECASE))
    return lambda v: (s := _as_str(v)) is not None and rx.fullmatch(s) is not None


def _number_matcher(value: SigmaNumber) -> ValueMatcher:
    n = value.number
    return lambda v: (x := _as_number(v)) is not None and x == n


def _bool_matcher(value: SigmaBool) -> ValueMatcher:
    b = value.boolean
    text = "true" if b else "false"
    return lambda v: v is b or (isinstance(v, str) and v.strip().lower() == text)


def _regex_matcher(value: SigmaRegularExpression, mode: str) -> ValueMatcher:
    """``mode``: "search" (plain re, or re|contains), "start" (re|startswith, pySigma appended
    ``.*``), "end" (re|endswith, pySigma prepended ``.*``), "full" (both)."""
    flags = 0
    for flag in value.flags:
        flags |= SigmaRegularExpression.sigma_to_python_flags[flag]
    if value.regexp.contains_placeholder():
        raise _Unsupported("unsupported modifier 'expand': placeholders need a processing pipeline")
    pattern = str(value.regexp)
    if mode == "end":
        pattern = f"(?:{pattern})\\Z"
    rx = re.compile(pattern, flags)
    fn = {"search": rx.search, "end": rx.search, "start": rx.match, "full": rx.fullmatch}[mode]
    return lambda v: (s := _as_str(v)) is not None and fn(s) is not None


def _cidr_matcher(value: SigmaCIDRExpression) -> ValueMatcher:
    network = value.network

    def match(v: Any) -> bool:
        if not isinstance(v, str):
            return False
        try:
            return ipaddress.ip_address(v.strip()) in network
        except ValueError:  # hostnames, anonymised or malformed addresses
            return False

    return match


_COMPARE_OPS = {
    CompareOperators.LT: operator.lt,
    CompareOperators.LTE: operator.le,
    CompareOperators.GT: operator.gt,
    CompareOperators.GTE: operator.ge,
    CompareOperators.NEQ: operator.ne,
}


def _compare_matcher(value: SigmaCompareExpression) -> ValueMatcher:
    op = _COMPARE_OPS[value.op]
    n = value.number.number
    return lambda v: (x := _as_number(v)) is not None and op(x, n)


def _timestamp(v: Any) -> datetime | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        secs = v / 1000 if v > 100_000_000_000 else v  # epoch milliseconds vs seconds
        return datetime.fromtimestamp(secs, UTC)
    if isinstance(v, str):
        try:
            return datetime.fromisoformat(v.strip())
        except ValueError:
            return None
    return None


_TIMESTAMP_PARTS: dict[TimestampPart, Callable[[datetime], int]] = {
    TimestampPart.MINUTE: lambda d: d.minute,
    TimestampPart.HOUR: lambda d: d.hour,
    TimestampPart.DAY: lambda d: d.day,
    TimestampPart.WEEK: lambda d: d.isocalendar().week,
    TimestampPart.MONTH: lambda d: d.month,
    TimestampPart.YEAR: lambda d: d.year,
}


def _timestamp_matcher(value: SigmaTimestampPart) -> ValueMatcher:
    part = _TIMESTAMP_PARTS[value.timestamp_part]
    n = value.number
    return lambda v: (d := _timestamp(v)) is not None and part(d) == n


def _value_matcher(value: Any, regex_mode: str) -> ValueMatcher:
    """Compile one pySigma value (after modifiers) into a scalar matcher."""
    if isinstance(value, SigmaString):  # includes SigmaCasedString
        return _string_matcher(value)
    if isinstance(value, SigmaTimestampPart):
        return _timestamp_matcher(value)
    if isinstance(value, SigmaNumber):
        return _number_matcher(value)
    if isinstance(value, SigmaBool):
        return _bool_matcher(value)
    if isinstance(value, SigmaRegularExpression):
        return _regex_matcher(value, regex_mode)
    if isinstance(value, SigmaCIDRExpression):
        return _cidr_matcher(value)
    if isinstance(value, SigmaCompareExpression):
        return _compare_matcher(value)
    if isinstance(value, SigmaExpansion):
        inner = [_value_matcher(v, regex_mode) for v in value.values]
        return lambda v: any(m(v) for m in inner)
    raise _Unsupported(f"unsupported value type {type(value).__name__}")


def _any_element(m: ValueMatcher) -> ValueMatcher:
    """Apply a scalar matcher to a value that may be a list (any element)."""

    def match(v: Any) -> bool:
        if isinstance(v, list):
            return any(match(x) for x in v)
        return m(v)

    return match


# --------------------------------------------------------------------------------------------
# Detection items -> predicates
# --------------------------------------------------------------------------------------------


def _fieldref_predicate(get: Callable[[Event], Any], ref: SigmaFieldReference) -> Predicate:
    get_ref = _make_getter(ref.field)
    starts, ends = ref.starts_with, ref.ends_with

    def compare(a: str, b: str) -> bool:
        if starts and ends:
            return bool(b) and b in a
        if starts:
            return bool(b) and a.startswith(b)
        if ends:
            return bool(b) and a.endswith(b)
        return a == b

    def flat(v: Any) -> Iterator[str]:
        for x in v if isinstance(v, list) else (v,):
            s = _as_str(x)
            if s is not None:
                yield s.lower()

    def pred(event: Event) -> bool:
        a = get(event)
        if a is _MISSING or a is None:
            return False
        b = get_ref(event)
        if b is _MISSING or b is None:
            return False
        refs = list(flat(b))
        return any(compare(x, y) for x in flat(a) for y in refs)

    return pred


def _item_predicate(item: SigmaDetectionItem) -> Predicate:
    """Compile one detection item (field + modifiers + values) into a predicate."""
    mods = set(item.modifiers)
    if SigmaContainsModifier in mods:
        regex_mode = "search"
    elif SigmaStartswithModifier in mods and SigmaEndswithModifier in mods:
        regex_mode = "full"
    elif SigmaStartswithModifier in mods:
        regex_mode = "start"
    elif SigmaEndswithModifier in mods:
        regex_mode = "end"
    else:
        regex_mode = "search"
    values = item.value
    link_all = item.value_linking is ConditionAND

    if item.field is None:  # keyword detection: any scalar anywhere in the event
        matchers = [_value_matcher(v, regex_mode) for v in values]

        def kw_one(m: ValueMatcher) -> Predicate:
            return lambda event: any(m(leaf) for leaf in _leaves(event))

        preds = [kw_one(m) for m in matchers]
        pred = _and(preds) if link_all else _or(preds)
        return _not(pred) if item.negated else pred

    get = _make_getter(item.field)
    preds: list[Predicate] = []
    if not values:  # pySigma: an empty value list means null
        values = [SigmaNull()]
    plain_exact: set[str] = set()
    others: list[Any] = []
    for v in values:
        if not link_all and type(v) is SigmaString and all(isinstance(p, str) for p in v.s):
            plain_exact.add("".join(v.s).lower())
        else:
            others.append(v)
    if plain_exact:
        wanted = frozenset(plain_exact)
        if len(wanted) == 1:
            (only,) = wanted

            def scalar_eq(v: Any) -> bool:
                s = _as_str(v)
                return s is not None and s.lower() == only

            m_exact = scalar_eq
        else:

            def scalar_in(v: Any) -> bool:
                s = _as_str(v)
                return s is not None and s.lower() in wanted

            m_exact = scalar_in
        preds.append(_field_predicate(get, m_exact))
    for v in others:
        if isinstance(v, SigmaNull):
            preds.append(lambda event: (x := get(event)) is _MISSING or x is None)
        elif isinstance(v, SigmaExists):
            want = v.exists
            preds.append(lambda event, want=want: ((x := get(event)) is not _MISSING and x is not None) is want)
        elif isinstance(v, SigmaFieldReference):
            preds.append(_fieldref_predicate(get, v))
        else:
            preds.append(_field_predicate(get, _value_matcher(v, regex_mode)))
    pred = _and(preds) if link_all else _or(preds)
    return _not(pred) if item.negated else pred


def _field_predicate(get: Callable[[Event], Any], m: ValueMatcher) -> Predicate:
    def pred(event: Event) -> bool:
        v = get(event)
        if v is _MISSING or v is None:
            return False
        if isinstance(v, list):
            return any(m(x) for x in _flatten(v))
        return m(v)

    return pred


def _flatten(v: list[Any]) -> Iterator[Any]:
    for x in v:
        if isinstance(x, list):
            yield from _flatten(x)
        else:
            yield x


def _and(preds: list[Predicate]) -> Predicate:
    if len(preds) == 1:
        return preds[0]
    if len(preds) == 2:
        a, b = preds
        return lambda event: a(event) and b(event)
    t = tuple(preds)

    def pred(event: Event) -> bool:
        for p in t:
            if not p(event):
                return False
        return True

    return pred


def _or(preds: list[Predicate]) -> Predicate:
    if len(preds) == 1:
        return preds[0]
    if len(preds) == 2:
        a, b = preds
        return lambda event: a(event) or b(event)
    t = tuple(preds)

    def pred(event: Event) -> bool:
        for p in t:
            if p(event):
                return True
        return False

    return pred


def _not(p: Predicate) -> Predicate:
    return lambda event: not p(event)


# --------------------------------------------------------------------------------------------
# Pre-index constraints: {field: values} that must hold for the expression to be true
# --------------------------------------------------------------------------------------------

Constraint = dict[str, frozenset[str]]


def _item_constraint(item: SigmaDetectionItem) -> Constraint:
    if item.field is None or item.negated or not item.value:
        return {}
    plain = []
    for v in item.value:
        if type(v) not in (SigmaString, SigmaCasedString) or not all(isinstance(p, str) for p in v.s):
            return {}
        plain.append("".join(v.s).lower())
    if item.value_linking is ConditionAND:
        return {item.field: frozenset(plain[:1])}
    return {item.field: frozenset(plain)}


def _c_and(cs: Iterable[Constraint]) -> Constraint:
    out: Constraint = {}
    for c in cs:
        for k, v in c.items():
            out[k] = out[k] & v if k in out else v
    return out


def _c_or(cs: list[Constraint]) -> Constraint:
    if not cs:
        return {}
    keys = set(cs[0]).intersection(*cs[1:])
    return {k: frozenset().union(*(c[k] for c in cs)) for k in keys}


# --------------------------------------------------------------------------------------------
# Rule compilation
# --------------------------------------------------------------------------------------------


class _RuleCompiler:
    """Compiles one SigmaRule's detections and condition tree; errors carry the field path."""

    def __init__(self, rule: SigmaRule, path: str, doc_lines: _LineFinder) -> None:
        self.rule = rule
        self.path = path
        self.lines = doc_lines
        self.detections = rule.detection
        self.cache: dict[str, tuple[Predicate, Constraint]] = {}

    def error(self, field: str, reason: str, keys: list[Any]) -> SigmaRuleError:
        return SigmaRuleError(self.path, field, reason, self.lines.line(keys))

    def detection(self, name: str) -> tuple[Predicate, Constraint]:
        if name not in self.cache:
            self.cache[name] = self._detection(self.detections[name], name)
        return self.cache[name]

    def _detection(self, det: SigmaDetection, name: str) -> tuple[Predicate, Constraint]:
        compiled: list[tuple[Predicate, Constraint]] = []
        for sub in det.detection_items:
            if isinstance(sub, SigmaDetection):
                compiled.append(self._detection(sub, name))
                continue
            key = sub.field or ""
            if sub.modifiers:
                key += "|" + "|".join(reverse_modifier_mapping[m.__name__] for m in sub.modifiers)
            if SigmaExpandModifier in sub.modifiers:
                raise self.error(
                    f"detection.{name}.{key}",
                    "unsupported modifier 'expand': " + _UNSUPPORTED_MODIFIERS["expand"],
                    ["detection", name, key],
                )
            try:
                pred = _item_predicate(sub)
            except _Unsupported as e:
                raise self.error(f"detection.{name}.{key}", str(e), ["detection", name, key]) from None
            except (re.error, ValueError) as e:
                raise self.error(f"detection.{name}.{key}", str(e), ["detection", name, key]) from None
            compiled.append((pred, _item_constraint(sub)))
        preds = [p for p, _ in compiled]
        cons = [c for _, c in compiled]
        if det.item_linking is ConditionOR:
            return _or(preds), _c_or(cons)
        return _and(preds), _c_and(cons)

    def condition(self, node: Any) -> tuple[Predicate, Constraint]:
        if isinstance(node, ConditionIdentifier):
            return self.detection(node.identifier)
        if isinstance(node, ConditionSelector):
            ids = [i.identifier for i in node.resolve_referenced_detections(self.detections)]
            parts = [self.detection(i) for i in ids]
            if node.cond_class is ConditionAND:
                return _and([p for p, _ in parts]), _c_and(c for _, c in parts)
            return _or([p for p, _ in parts]), _c_or([c for _, c in parts])
        if isinstance(node, ConditionNOT):
            p, _ = self.condition(node.args[0])
            return _not(p), {}
        if isinstance(node, ConditionAND):
            parts = [self.condition(a) for a in node.args]
            return _and([p for p, _ in parts]), _c_and(c for _, c in parts)
        if isinstance(node, ConditionOR):
            parts = [self.condition(a) for a in node.args]
            return _or([p for p, _ in parts]), _c_or([c for _, c in parts])
        raise self.error(
            "detection.condition",
            f"unsupported condition element {type(node).__name__}",
            ["detection", "condition"],
        )

    def compile(self) -> tuple[Predicate, Constraint]:
        parts = []
        for cond in self.detections.parsed_condition:
            try:
                cond.parse(postprocess=True)  # pySigma's validation (identifiers, selectors)
                tree = cond.parse(postprocess=False)
            except SigmaError as e:
                raise self.error("detection.condition", _reason(e), ["detection", "condition"]) from None
            if not isinstance(tree, (ConditionItem,)):
                raise self.error("detection.condition", "empty condition", ["detection", "condition"])
            parts.append(self.condition(tree))
        return _or([p for p, _ in parts]), _c_or([c for _, c in parts])


def _reason(e: BaseException) -> str:
    """pySigma error message without its ' in <file>' suffix."""
    return str(e.args[0]) if e.args else type(e).__name__


class _LineFinder:
    """Maps a key path (e.g. ['detection', 'selection', 'eventName|foo']) to a 1-based line."""

    def __init__(self, node: yaml.Node | None) -> None:
        self.node = node

    def line(self, keys: list[Any]) -> int | None:
        node = self.node
        if node is None:
            return None
        line = node.start_mark.line + 1
        for k in keys:
            if isinstance(node, yaml.MappingNode):
                for key_node, value_node in node.value:
                    if key_node.value == str(k):
                        line = key_node.start_mark.line + 1
                        node = value_node
                        break
                else:
                    return line
            elif isinstance(node, yaml.SequenceNode) and isinstance(k, int) and k < len(node.value):
                node = node.value[k]
                line = node.start_mark.line + 1
            else:
                return line
        return line


def _prevalidate(doc: dict[str, Any], path: str, lines: _LineFinder) -> None:
    """Field-level checks so errors can name the offending key (pySigma's do not)."""
    for top in ("title", "logsource", "detection"):
        if top not in doc:
            raise SigmaRuleError(path, top, "missing", lines.line([]))
    detection = doc["detection"]
    if not isinstance(detection, dict):
        raise SigmaRuleError(path, "detection", "must be a map", lines.line(["detection"]))
    if "condition" not in detection:
        raise SigmaRuleError(path, "detection.condition", "missing", lines.line(["detection"]))
    conditions = detection["condition"]
    for cond in conditions if isinstance(conditions, list) else [conditions]:
        if not isinstance(cond, str):
            raise SigmaRuleError(
                path, "detection.condition", "must be a string", lines.line(["detection", "condition"])
            )
        if "|" in cond:
            raise SigmaRuleError(
                path,
                "detection.condition",
                "unsupported: aggregation ('|') conditions are replaced by correlation rules",
                lines.line(["detection", "condition"]),
            )
    for name, definition in detection.items():
        if name == "condition":
            continue
        maps = (
            [definition]
            if isinstance(definition, dict)
            else ([d for d in definition if isinstance(d, dict)] if isinstance(definition, list) else [])
        )
        for idx, mapping in enumerate(maps):
            for key, val in mapping.items():
                field = f"detection.{name}.{key}"
                keypath = ["detection", name, key] if isinstance(definition, dict) else ["detection", name, idx, key]
                if not isinstance(key, str):
                    raise SigmaRuleError(path, field, "field name must be a string", lines.line(keypath))
                for mod in key.split("|")[1:]:
                    if mod not in modifier_mapping:
                        raise SigmaRuleError(path, field, f"unknown modifier '{mod}'", lines.line(keypath))
                    if mod in _UNSUPPORTED_MODIFIERS:
                        raise SigmaRuleError(
                            path,
                            field,
                            f"unsupported modifier '{mod}': {_UNSUPPORTED_MODIFIERS[mod]}",
                            lines.line(keypath),
                        )
                try:
                    SigmaDetectionItem.from_mapping(key, val)
                except SigmaError as e:
                    raise SigmaRuleError(path, field, _reason(e), lines.line(keypath)) from None
                except (TypeError, AttributeError) as e:
                    raise SigmaRuleError(path, field, f"invalid value: {e}", lines.line(keypath)) from None


def _technique_ids(tags: Iterable[Any]) -> tuple[str, ...]:
    out = []
    for tag in tags:
        if tag.namespace == "attack" and _TECHNIQUE_RE.fullmatch(tag.name.lower()):
            tid = tag.name.upper()
            if tid not in out:
                out.append(tid)
    return tuple(out)


def _compile_documents(text: str, path: str) -> list[CompiledRule]:
    try:
        docs = list(yaml.load_all(text, SigmaYAMLLoader))
        nodes = list(yaml.compose_all(text, yaml.SafeLoader))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise SigmaRuleError(
            path,
            "<yaml>",
            f"invalid YAML: {getattr(e, 'problem', None) or e}",
            mark.line + 1 if mark is not None else None,
        ) from None
    nodes = [n for n in nodes if n is not None]
    rules: list[CompiledRule] = []
    pending: list[tuple[dict[str, Any], _LineFinder]] = []
    for i, doc in enumerate(d for d in docs if d is not None):
        lines = _LineFinder(nodes[i] if i < len(nodes) else None)
        if not isinstance(doc, dict):
            raise SigmaRuleError(path, "<document>", "a Sigma rule must be a YAML map", lines.line([]))
        if "correlation" in doc:
            raise SigmaRuleError(
                path,
                "correlation",
                "unsupported: Sigma correlation rules are not evaluated",
                lines.line(["correlation"]),
            )
        if "filter" in doc:
            raise SigmaRuleError(
                path, "filter", "unsupported: Sigma meta filters are not evaluated", lines.line(["filter"])
            )
        if "action" in doc:
            raise SigmaRuleError(
                path,
                "action",
                "unsupported: collection actions (global/repeat/reset) are deprecated",
                lines.line(["action"]),
            )
        _prevalidate(doc, path, lines)
        pending.append((doc, lines))

    for doc, lines in pending:
        source = SigmaRuleLocation(Path(path))
        try:
            collection = SigmaCollection.from_dicts([doc], source=source)
        except SigmaError as e:
            field = _ERROR_FIELDS.get(type(e).__name__, "rule")
            raise SigmaRuleError(path, field, _reason(e), lines.line(field.split("."))) from None
        for rule in collection:
            if isinstance(rule, (SigmaCorrelationRule, SigmaFilter)) or not isinstance(rule, SigmaRule):
                raise SigmaRuleError(path, "rule", f"unsupported rule type {type(rule).__name__}")
            match = SigmaMatch(
                id=str(rule.id) if rule.id is not None else f"{path}#{len(rules)}",
                title=rule.title,
                path=path,
                level=str(rule.level) if rule.level is not None else "",
                technique_ids=_technique_ids(rule.tags),
                tags=tuple(str(t) for t in rule.tags),
                author=rule.author,
                references=tuple(rule.references),
            )
            rules.append(_compile_rule(rule, match, lines))
    return rules


def _compile_rule(rule: SigmaRule, match: SigmaMatch, lines: _LineFinder) -> CompiledRule:
    """``rule`` (parsed by pySigma, perhaps rewritten by a processing pipeline) compiled, reported
    as ``match``; raises :class:`SigmaRuleError` naming ``match.path``."""
    predicate, constraint = _RuleCompiler(rule, match.path, lines).compile()
    return CompiledRule(
        match=match,
        predicate=predicate,
        product=_lower(rule.logsource.product),
        service=_lower(rule.logsource.service),
        category=_lower(rule.logsource.category),
        index=_pick_index(constraint),
        sigma_rule=rule,
    )


def _lower(s: str | None) -> str | None:
    return s.lower() if isinstance(s, str) else None


_PREFERRED_INDEX_FIELDS = ("eventName", "eventSource")


def _pick_index(constraint: Constraint) -> tuple[str, frozenset[str]] | None:
    if not constraint:
        return None
    for f in _PREFERRED_INDEX_FIELDS:
        if f in constraint:
            return f, constraint[f]
    field = min(constraint, key=lambda f: (len(constraint[f]), f))
    return field, constraint[field]


# --------------------------------------------------------------------------------------------
# Rule sets
# --------------------------------------------------------------------------------------------


class _Partition:
    """Rules fitting one (product, service, category) with their pre-index."""

    __slots__ = ("always", "tables", "single")

    def __init__(self, rules: list[tuple[int, CompiledRule]]) -> None:
        tables: dict[str, dict[str, list[tuple[int, CompiledRule]]]] = {}
        self.always: list[tuple[int, CompiledRule]] = []
        for pos, rule in rules:
            if rule.index is None:
                self.always.append((pos, rule))
                continue
            field, values = rule.index
            table = tables.setdefault(field, {})
            for v in values:
                table.setdefault(v, []).append((pos, rule))
        self.tables = [(_make_getter(f), t) for f, t in tables.items()]
        self.single = len(self.tables) == 1 and not self.always

    def candidates(self, event: Event) -> list[tuple[int, CompiledRule]]:
        found: list[tuple[int, CompiledRule]] = []
        for get, table in self.tables:
            v = get(event)
            if v is _MISSING or v is None:
                continue
            if isinstance(v, list):
                for x in _flatten(v):
                    k = _index_key(x)
                    if k is not None and k in table:
                        found.extend(table[k])
            else:
                k = _index_key(v)
                if k is not None:
                    hit = table.get(k)
                    if hit:
                        found.extend(hit)
        if self.always:
            found.extend(self.always)
        if len(found) > 1:
            found = sorted({pos: (pos, rule) for pos, rule in found}.values(), key=lambda pr: pr[0])
        return found


class RuleSet:
    """A set of compiled Sigma rules evaluated in Python over event dicts.

    Build with :meth:`load` (a rule file or a directory searched recursively for ``*.yml``) or
    :meth:`from_yaml`. Every rule is parsed by pySigma and compiled once; a rule that cannot be
    parsed, or that uses a feature this evaluator does not implement (correlation rules, meta
    filters, ``expand``), raises :class:`SigmaRuleError` naming the file and the field.

    :meth:`match` returns the :class:`SigmaMatch` of every rule whose logsource fits and whose
    detection is true for the event, in rule load order. Rules are pre-indexed on a field their
    condition requires to equal one of a fixed set of values (``eventName`` preferred), so most
    events are rejected with one dict lookup.
    """

    def __init__(self, rules: Iterable[CompiledRule]) -> None:
        from cordon.providers import sigma_rule_problem

        #: ``(path, rule title, reason)`` of each rule left out because the provider reading its
        #: logsource says it can never match (:meth:`cordon.providers.Provider.rule_problem`)
        self.problems: list[tuple[str | None, str, str]] = []
        self.rules: list[CompiledRule] = []
        for rule in rules:
            problem = sigma_rule_problem(rule.product, rule.sigma_rule)
            if problem:
                self.problems.append((rule.match.path, rule.title, problem))
                logging.getLogger(__name__).warning("Sigma rule %s (%s) left out: it can never match: %s",
                                                    rule.match.path, rule.title, problem)
            else:
                self.rules.append(rule)
        self._partitions: dict[tuple[Any, ...], _Partition] = {}
        #: ``(rule position, normalisation) -> the rule rewritten by it`` (see :meth:`match`)
        self._rewritten: dict[tuple[int, FieldNormalisation], CompiledRule] = {}

    @classmethod
    def load(cls, path: str | Path | Sequence[str | Path]) -> RuleSet:
        """Load ``path``: a ``.yml``/``.yaml`` file, or a directory (recursive ``*.yml``, sorted), or
        several of them (each provider's shipped rules, :func:`cordon.providers.shipped_rule_dirs`),
        in the order given.

        Raises:
            SigmaRuleError: a rule is invalid or unsupported (``path`` names its file).
            FileNotFoundError: ``path`` does not exist.
        """
        paths = [path] if isinstance(path, (str, Path)) else list(path)
        rules: list[CompiledRule] = []
        for one in paths:
            p = Path(one)
            if not p.exists():
                raise FileNotFoundError(str(p))
            files = sorted(p.rglob("*.yml")) if p.is_dir() else [p]
            for f in files:
                rules.extend(_compile_documents(f.read_text(encoding="utf-8"), str(f)))
        return cls(rules)

    @classmethod
    def from_yaml(cls, text: str, path: str = "<inline>") -> RuleSet:
        """Compile the rule(s) in ``text`` (one or more YAML documents).

        Raises:
            SigmaRuleError: as for :meth:`load`, with ``path`` as the file name.
        """
        return cls(_compile_documents(text, path))

    def __len__(self) -> int:
        return len(self.rules)

    def __iter__(self) -> Iterator[CompiledRule]:
        return iter(self.rules)

    def _partition(self, product: str | None, service: str | None, category: str | None,
                   normalise: FieldNormalisation | None = None) -> _Partition:
        key = (product, service, category, normalise)
        part = self._partitions.get(key)
        if part is None:
            fitting = [
                (pos, self._rewrite(pos, r, normalise))
                for pos, r in enumerate(self.rules)
                if (product is None or r.product is None or r.product == product)
                and (service is None or r.service is None or r.service == service)
                and (r.category is None or r.category == category)
            ]
            part = self._partitions[key] = _Partition(fitting)
        return part

    def _rewrite(self, pos: int, rule: CompiledRule, normalise: FieldNormalisation | None) -> CompiledRule:
        """``rule`` with its values of ``normalise``'s fields rewritten (compiled once), or ``rule``
        itself when it names none of them."""
        if normalise is None or not normalise.touches(rule.sigma_rule):
            return rule
        key = (pos, normalise)
        done = self._rewritten.get(key)
        if done is None:
            done = _compile_rule(normalise.apply_to_rule(rule.sigma_rule), rule.match, _LineFinder(None))
            self._rewritten[key] = done
        return done

    def match(
        self,
        event: Event,
        product: str | None = None,
        service: str | None = None,
        category: str | None = None,
        normalise: FieldNormalisation | None = None,
    ) -> list[SigmaMatch]:
        """Evaluate all fitting rules on ``event`` (a decoded JSON object).

        A rule fits when its logsource ``product`` equals ``product`` and its ``service`` equals
        ``service`` (case-insensitive); a rule without ``service`` fits every service of its
        product; ``None`` arguments do not filter. Rules with a logsource ``category`` fit only
        when ``category`` is given and equal.

        ``normalise`` (:class:`cordon.sigma.normalise.FieldNormalisation`, declared by the record's
        source): the event is evaluated as :meth:`~FieldNormalisation.event` rewrites it, and every
        fitting rule that names one of its fields as :meth:`~FieldNormalisation.pipeline` rewrites
        it (compiled once per rule and normalisation), so both sides compare canonical spellings.
        ``event`` itself is not modified.

        Returns:
            list of :class:`SigmaMatch` in rule load order (empty when nothing matched).
        """
        part = self._partitions.get((product, service, category, normalise))
        if part is None:
            part = self._partition(
                product.lower() if product else None,
                service.lower() if service else None,
                category.lower() if category else None,
                normalise,
            )
            self._partitions[(product, service, category, normalise)] = part
        if normalise is not None:
            event = normalise.event(event)
        if part.single:  # fast path: one index field, no unindexed rules
            get, table = part.tables[0]
            v = get(event)
            if type(v) is str:
                hit = table.get(v.lower())
                if not hit:
                    return []
                return [r.match for _, r in hit if r.predicate(event)]
        return [r.match for _, r in part.candidates(event) if r.predicate(event)]
