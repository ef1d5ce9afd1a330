"""Reading input files and recognising the AWS and Google Cloud record shapes they hold.

:func:`read_inputs` turns paths (or ``-`` for standard input) into a stream of
:class:`RawRecord` (one CloudTrail event, GuardDuty finding, Security Hub ASFF finding, Cloud Audit
Log entry or Security Command Center finding, already unwrapped from its envelope) and
:class:`~cordon.detections.errors.Rejected` (anything that could not be read or recognised).
A bad record never stops the rest of the input.

Formats recognised per input, whatever its name:

* gzip, by its magic bytes ``1f 8b`` (RFC 1952), possibly multi-member; a truncated stream yields
  every record that was complete, then a ``Rejected`` saying "truncated gzip";
* one JSON value per line (JSON lines; blank lines are skipped), read line by line;
* a JSON document: a single object, an array of objects, or several objects one after the other
  (concatenated JSON, as Kinesis Firehose writes them);
* in every one of those, each object may be an envelope:

  - a CloudTrail S3 delivery file ``{"Records": [...]}``
    (https://docs.aws.amazon.com/awscloudtrail/latest/userguide/cloudtrail-log-file-examples.html);
  - a Security Hub ``{"Findings": [...]}`` (``GetFindings`` / ``BatchImportFindings`` shape);
  - an EventBridge event (https://docs.aws.amazon.com/eventbridge/latest/ref/overiew-event-structure.html):
    ``detail-type`` "AWS API Call via CloudTrail" and the other "... via CloudTrail" types carry a
    CloudTrail event in ``detail``; "GuardDuty Finding" carries a finding in ``detail``;
    "Security Hub Findings - Imported" (and "- Custom Action") carry ASFF findings in
    ``detail.findings``;
  - a Pub/Sub push request
    (https://cloud.google.com/pubsub/docs/push#receive_push):
    ``{"message": {"data": "<base64>", "messageId": ..., "attributes": ...}, "subscription": ...}``;
    ``data`` is decoded (standard base64, then UTF-8 JSON) and classified; a Cloud Logging sink
    to Pub/Sub puts one ``LogEntry`` there, an SCC notification config one
    ``{"notificationConfigName", "finding", "resource"}``;
  - the Cloud Logging ``entries.list`` response ``{"entries": [...]}`` and the SCC
    ``ListFindings`` response ``{"listFindingsResults": [{"finding", "resource"}, ...]}``.

  - Azure Monitor's ``{"records": [...]}`` (diagnostic settings to Event Hub or storage: Entra audit
    and sign-in logs, Activity Log) and the ``{"value": [...]}`` list responses of Microsoft Graph
    (``GET /auditLogs/directoryAudits``) and of the Activity Log REST API.

Cloud Logging exports to Cloud Storage are JSON lines of ``LogEntry``, read as any JSON lines.

Memory: JSON lines are read line by line. A JSON document (an array, a pretty-printed
``{"Records": [...]}``, or a first line over 1 MiB such as CloudTrail's own single-line delivery
file) is held as text once and its items are decoded one at a time with
:meth:`json.JSONDecoder.raw_decode`, never as one decoded object; no streaming-parser dependency
is needed. ``benchmarks/bench_intake.py`` measures it (100k events: JSON lines at flat RSS; a 75 MiB
pretty-printed document peaks near 2.4x its size, while its bytes and text briefly coexist).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import sys
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from cordon.detections.errors import Rejected

#: A record kind: a :class:`cordon.providers.Source`'s ``kind`` (which provider reads the record).
Kind = str

#: ``raw_text`` of a Rejected is cut at this many characters, with a note saying how much was cut.
RAW_TEXT_CAP = 1024 * 1024

#: Deepest nesting of objects and arrays accepted in one record (the record object itself is level 1).
#: Real CloudTrail, GuardDuty, ASFF, Cloud Audit Log and Entra records nest under 15 levels. A deeper
#: record is dead-lettered (field: the path where the limit is crossed) before any parser, Sigma
#: matcher, redaction or serialiser recurses into it; JSON nested near Python's recursion limit
#: (about 1,000 levels), which the ``json`` module itself cannot decode, is dead-lettered the same way
#: and the rest of the input is read (issue 10, item 3).
MAX_DEPTH = 64

#: Longest string (value or key) accepted in one field, in characters: 64 KiB. A longer one is
#: dead-lettered naming the field, so a 600 KB ``userAgent`` never reaches Prefect's parameters
#: (512 KiB limit) or the redaction regexes (issue 10, item 5). The dead letter keeps the record.
MAX_FIELD_CHARS = 64 * 1024

#: Largest record accepted, in characters: 1 MiB, counted over its keys and string values plus
#: one per number, boolean and null (a lower bound of its JSON text's length). A larger record is
#: dead-lettered as a whole (field ``None``). CloudTrail events are at most 256 KB.
MAX_RECORD_CHARS = 1024 * 1024

_CHUNK = 64 * 1024
_BIG_LINE = 1024 * 1024
_GZIP_MAGIC = b"\x1f\x8b"
_WS = re.compile(r"[ \t\n\r]*")
#: Any UTF-16 surrogate code point in a ``str``: Python keeps a valid pair as one character, so a
#: match is always a lone surrogate (JSON ``"\ud800"``), which is not Unicode text (RFC 8259 section 8.2).
_SURROGATE = re.compile("[\ud800-\udfff]")


class _DupKeys(dict):
    """A decoded JSON object in which some key appeared more than once (``duplicates``: those keys, in
    order). ``json`` keeps the last value; Cordon refuses to guess and dead-letters the record."""

    duplicates: list[str]


#: How many :class:`_DupKeys` this process has made: while 0, no decoded record holds a duplicate key
#: and the walk looking for one is skipped.
_DUPS_MADE = [0]


def _object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    _DUPS_MADE[0] += 1
    marked = _DupKeys(obj)
    marked.duplicates = [k for k, _ in pairs if k in seen or seen.add(k)]  # type: ignore[func-returns-value]
    return marked


class _TooDeep:
    """Stands for a JSON value nested too deep for Python's ``json`` to decode (``RecursionError``)."""

    def __repr__(self) -> str:
        return "<nested too deep to decode>"


_TOO_DEEP = _TooDeep()
_decoder = json.JSONDecoder(object_pairs_hook=_object_pairs)
#: Strings and brackets, to find where a value too deep to decode ends (error path only).
_SKIP_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*+"|[\[\]{}]', re.S)


def _value_end(text: str, pos: int) -> int | None:
    """End of the array or object starting at ``text[pos]``, found by counting brackets outside
    strings; ``None`` when it never closes."""
    depth = 0
    for m in _SKIP_TOKEN.finditer(text, pos):
        ch = m.group()[0]
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
            if depth == 0:
                return m.end()
    return None


def _raw_decode(text: str, pos: int) -> tuple[Any, int]:
    """:meth:`json.JSONDecoder.raw_decode` with duplicate keys marked (:class:`_DupKeys`); a value
    too deep to decode is returned as ``_TOO_DEEP`` with its end. Raises ``json.JSONDecodeError``."""
    try:
        return _decoder.raw_decode(text, pos)
    except RecursionError:
        end = _value_end(text, pos)
        if end is None:
            raise json.JSONDecodeError("nested too deep, and never closed", text, pos) from None
        return _TOO_DEEP, end


def _loads(text: str) -> Any:
    """``json.loads`` with duplicate keys marked and ``_TOO_DEEP`` for a value too deep to decode.
    Raises ``json.JSONDecodeError``."""
    value, end = _raw_decode(text, _WS.match(text, 0).end())
    end = _WS.match(text, end).end()
    if end != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return value


def _clean(text: str) -> str:
    """``text`` with each lone surrogate written as a ``\\udXXX`` escape, so that it is valid UTF-8."""
    if _SURROGATE.search(text) is None:
        return text
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _dump(value: Any) -> str:
    """JSON text of a decoded value for a dead letter; never raises."""
    try:
        return json.dumps(value, ensure_ascii=False, default=repr)
    except (ValueError, TypeError, RecursionError) as exc:
        return f"<record not serialisable as JSON: {type(exc).__name__}>"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


#: In a record's JSON text: a ``\uD800``-``\uDFFF`` escape or a surrogate character (a lone surrogate
#: can only come from one of these).
_SURROGATE_IN_TEXT = re.compile(r"\\u[dD][89a-fA-F]|[\ud800-\udfff]")


def _text_rules_out_limits(text: str) -> bool:
    """Whether the record's own JSON ``text`` shows it cannot break the depth, size or surrogate limits:
    no longer than a field may be (so no string, key or record is over its cap), fewer brackets than
    :data:`MAX_DEPTH` (so not that deep, and decodable), no surrogate escape. Duplicate keys are still
    to be checked (:func:`_duplicate_keys`)."""
    if len(text) > MAX_FIELD_CHARS or text.count("{") + text.count("[") >= MAX_DEPTH:
        return False
    if text.isascii():
        return "\\u" not in text or _SURROGATE_IN_TEXT.search(text) is None
    return _SURROGATE_IN_TEXT.search(text) is None


def _duplicate_keys(record: Any) -> tuple[str | None, str] | None:
    """:func:`record_problem` for a record whose text already rules out every other limit: only the
    objects are visited, for keys seen twice (none to find while no duplicate was ever decoded)."""
    if not _DUPS_MADE[0]:
        return None
    stack: list[tuple[Any, str]] = [(record, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            if type(value) is _DupKeys:
                return record_problem(record)  # the full check names the field as it always did
            stack.extend((item, _join(path, key)) for key, item in value.items() if isinstance(item, dict | list))
        else:
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(value) if isinstance(item, dict | list))
    return None


def record_problem(record: Any, text: str | None = None) -> tuple[str | None, str] | None:
    """Why ``record`` (a decoded JSON value) cannot be accepted, as ``(field, reason)``, or ``None``.

    Checked, without recursion: nesting deeper than :data:`MAX_DEPTH` (or too deep to decode at
    all), a key that appears twice in one object (duplicate keys are not guessed at), a string over
    :data:`MAX_FIELD_CHARS`, a lone UTF-16 surrogate in a key or string, and a record over
    :data:`MAX_RECORD_CHARS`. ``field`` is the dotted path (array items as ``[i]``) of the first
    problem found, ``None`` for the record as a whole. Never raises.

    ``text``, the record's own JSON text when known, lets a record that is short, shallow and free
    of surrogate escapes be checked for duplicate keys only (the walk over every string costs more
    than decoding it).
    """
    if text is not None and _text_rules_out_limits(text):
        return _duplicate_keys(record)
    total = 0
    stack: list[tuple[Any, str, int]] = [(record, "", 1)]
    while stack:
        value, path, depth = stack.pop()
        if value is _TOO_DEEP or (depth > MAX_DEPTH and isinstance(value, dict | list)):
            return path or None, f"nested deeper than {MAX_DEPTH} levels of objects and arrays (MAX_DEPTH)"
        if isinstance(value, dict):
            dups = getattr(value, "duplicates", None)
            if dups:
                return _clean(_join(path, dups[0])), (
                    f"duplicate key {_clean(dups[0])!r} in one object (keys seen twice: "
                    f"{', '.join(repr(_clean(k)) for k in dict.fromkeys(dups))}); which value is meant is not guessed")
            for key, item in value.items():
                total += len(key)
                if len(key) > MAX_FIELD_CHARS:
                    return path or None, (f"a key of {len(key)} characters, over the {MAX_FIELD_CHARS}-character "
                                          "cap (MAX_FIELD_CHARS)")
                if _SURROGATE.search(key):
                    return _clean(_join(path, key)), ("a lone UTF-16 surrogate in the key "
                                                      "(not Unicode text, RFC 8259 8.2)")
                stack.append((item, _join(path, key), depth + 1))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                stack.append((item, f"{path}[{i}]", depth + 1))
            total += 1
        elif isinstance(value, str):
            total += len(value)
            if len(value) > MAX_FIELD_CHARS:
                return path or None, (f"a string of {len(value)} characters, over the {MAX_FIELD_CHARS}-character "
                                      "cap per field (MAX_FIELD_CHARS)")
            if _SURROGATE.search(value):
                return path or None, "a lone UTF-16 surrogate in the string (not Unicode text, RFC 8259 8.2)"
        else:
            total += 1
        if total > MAX_RECORD_CHARS:
            return None, f"record over {MAX_RECORD_CHARS} characters (MAX_RECORD_CHARS)"
    return None

def _expected_shapes() -> str:
    """What a recognised record looks like, for the dead-letter reason: every provider's shapes and
    the envelopes read here."""
    from cordon.providers import shapes

    return ("expected " + ", ".join(shapes()) + ", or an envelope (Records, Findings, EventBridge detail-type + "
            "detail, Pub/Sub message.data, entries, listFindingsResults, records, value)")


#: Pub/Sub push envelope fields kept as the record's envelope.
_PUBSUB_KEYS = ("messageId", "message_id", "publishTime", "publish_time", "attributes", "orderingKey")
#: Response wrappers of list APIs whose array items are records.
_LIST_KEYS = ("Records", "Findings", "entries", "listFindingsResults", "records", "value")

_ENVELOPE_KEYS = ("version", "id", "detail-type", "source", "account", "time", "region", "resources")


@dataclass(frozen=True)
class RawRecord:
    """One recognised record, unwrapped from its envelope.

    ``origin`` is the input as given (a path string, or ``<stdin>``); ``position`` the record's
    0-based index within that input after unwrapping (rejected records count too, blank lines do
    not); ``line`` the 1-based line the record (or its envelope) starts on, when known; ``kind``
    ``cloudtrail`` | ``guardduty`` | ``securityhub`` | ``gcp_audit`` | ``gcp_scc`` | ``entra_audit`` |
    ``entra_signin`` | ``azure_activity``; ``record`` the
    decoded object (for ``gcp_scc`` as read: a notification or ``{"finding", "resource"}`` is kept
    whole, the parser unwraps it); ``envelope`` the EventBridge envelope's metadata (``id``,
    ``detail-type``, ``source``, ``account``, ``time``, ``region``, ``resources``) or the Pub/Sub
    push envelope's (``messageId``, ``publishTime``, ``attributes``, ``subscription``) when the
    record came in one.
    """

    origin: str
    position: int
    kind: Kind
    record: dict[str, Any]
    envelope: dict[str, Any] | None = None
    line: int | None = None


def cap_text(text: str, cap: int = RAW_TEXT_CAP) -> str:
    """``text`` cut to ``cap`` characters, with a note saying how many were left out; a lone UTF-16
    surrogate (not storable as UTF-8) is written as its ``\\udXXX`` escape."""
    if len(text) > cap:
        text = text[:cap] + f"\n...[raw_text truncated: {len(text) - cap} more characters not kept]"
    return _clean(text)


def classify(record: Any) -> Kind | None:
    """The kind of a bare (unwrapped) record, or ``None`` when its shape is not recognised.

    Each provider recognises its own shapes (``cordon/providers/<cloud>/shapes.py``, asked in the
    registry's classification order, :meth:`cordon.providers.Provider.classify`); a provider may
    claim a record it does not read (a Cloud Logging entry that is not an audit log), which stops
    the search. Only presence is checked here; field types are validated by the parsers.
    """
    if not isinstance(record, dict):
        return None
    from cordon.providers import classify_record

    return classify_record(record)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
    }.get(type(value), type(value).__name__)


class _Input:
    """Per-input state: the origin, the next record position, and what was rejected."""

    def __init__(self, origin: str):
        self.origin = origin
        self.position = 0

    def take(self) -> int:
        pos = self.position
        self.position += 1
        return pos

    def reject(self, field_: str | None, reason: str, raw_text: str, *, count: bool = True) -> Rejected:
        """A dead letter at the next position. ``count=False`` (a failure of the input itself after its
        records, such as a truncated gzip stream) gives the position the next record would have had
        without taking it."""
        pos = self.take() if count else self.position
        return Rejected(origin=self.origin, position=pos, field=field_, reason=reason, raw_text=cap_text(raw_text))

    # -- unwrapping -------------------------------------------------------------------------

    def unwrap(self, value: Any, text: str, line: int | None) -> Iterator[RawRecord | Rejected]:
        """Records in one top-level value (a line, an array item, a document)."""
        where = f" (line {line})" if line is not None else ""
        if value is _TOO_DEEP:
            yield self.reject(None, f"nested deeper than {MAX_DEPTH} levels of objects and arrays{where} "
                                    "(too deep to decode; MAX_DEPTH)", text)
            return
        if not isinstance(value, dict):
            yield self.reject(None, f"expected a JSON object{where}, got {_type_name(value)}", text)
            return
        message = value.get("message")
        for obj, path in ((value, ""), (message, "message")):
            if isinstance(obj, _DupKeys):  # an envelope's own keys repeat: which records are meant is not guessed
                key = _clean(obj.duplicates[0])
                yield self.reject(_join(path, key), f"duplicate key {key!r} in one object{where}; which value is "
                                  "meant is not guessed", text)
                return
        if "detail-type" in value and "detail" in value:
            yield from self._eventbridge(value, text, line)
            return
        if isinstance(message, dict) and "data" in message and ("subscription" in value or "messageId" in message):
            yield self._pubsub(value, message, text, line)
            return
        from cordon.providers import Unreadable, unpack_record

        unpacked = unpack_record(value)
        if unpacked is not None:  # a provider's container of records (a log subscription, an event list)
            for item in unpacked:
                if isinstance(item, Unreadable):
                    yield self.reject(item.field, f"{item.reason}{where}", text)
                else:
                    yield self.leaf(item, None, line, None)
            return
        for key in _LIST_KEYS:
            if key in value and classify(value) is None:
                items = value[key]
                if not isinstance(items, list):
                    yield self.reject(key, f"expected an array{where}, got {_type_name(items)}", text)
                    return
                for item in items:
                    yield self.leaf(item, None, line, None)
                return
        yield self.leaf(value, text, line, None)

    def _pubsub(
        self, push: dict[str, Any], message: dict[str, Any], text: str, line: int | None
    ) -> RawRecord | Rejected:
        """One Pub/Sub push request: ``message.data`` is base64 of the record's JSON."""
        where = f" (line {line})" if line is not None else ""
        data = message.get("data")
        if not isinstance(data, str):
            return self.reject("message.data", f"expected a base64 string{where}, got {_type_name(data)}", text)
        try:
            raw = base64.b64decode(data.strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            return self.reject("message.data", f"not base64{where}: {exc}", text)
        try:
            decoded_text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            return self.reject("message.data", f"decoded data is not UTF-8 text{where}: {exc.reason}", text)
        try:
            decoded = _loads(decoded_text)
        except json.JSONDecodeError as exc:
            return self.reject(
                "message.data",
                f"decoded data is not JSON{where}: {exc.msg} at line {exc.lineno}, column {exc.colno}",
                text,
            )
        envelope = {k: message[k] for k in _PUBSUB_KEYS if k in message}
        if "subscription" in push:
            envelope["subscription"] = push["subscription"]
        return self.leaf(decoded, decoded_text, line, envelope)

    def _eventbridge(self, event: dict[str, Any], text: str, line: int | None) -> Iterator[RawRecord | Rejected]:
        envelope = {k: event[k] for k in _ENVELOPE_KEYS if k in event}
        detail_type = event.get("detail-type")
        detail = event.get("detail")
        where = f" (line {line})" if line is not None else ""
        if not isinstance(detail_type, str):
            yield self.reject("detail-type", f"expected a string{where}, got {_type_name(detail_type)}", text)
            return
        if not isinstance(detail, dict):
            yield self.reject("detail", f"expected an object{where}, got {_type_name(detail)}", text)
            return
        from cordon.providers import event_envelopes

        known = event_envelopes()
        envelope_of = next((e for e in known if e.matches(detail_type)), None)
        if envelope_of is None:
            yield self.reject(
                "detail-type",
                f"unsupported EventBridge detail-type {detail_type!r}{where}; expected "
                + ", ".join(e.example for e in known),
                text,
            )
        elif envelope_of.records is None:
            yield self.leaf(detail, None, line, envelope, expect=envelope_of.kind)
        else:
            records = detail.get(envelope_of.records)
            if not isinstance(records, list):
                yield self.reject(f"detail.{envelope_of.records}", f"expected an array{where}, got "
                                  f"{_type_name(records)}", text)
                return
            for record in records:
                yield self.leaf(record, None, line, envelope, expect=envelope_of.kind)

    def leaf(
        self,
        record: Any,
        text: str | None,
        line: int | None,
        envelope: dict[str, Any] | None,
        expect: Kind | None = None,
    ) -> RawRecord | Rejected:
        """Classify one bare record (``text`` is re-serialised when not given)."""
        where = f" (line {line})" if line is not None else ""
        problem = record_problem(record, text)
        if problem is not None:
            return self.reject(problem[0], f"{problem[1]}{where}", text if text is not None else _dump(record))
        kind = classify(record)
        if kind is None or (expect is not None and kind != expect):
            raw = text if text is not None else json.dumps(record, ensure_ascii=False, default=str)
            if not isinstance(record, dict):
                return self.reject(None, f"expected a JSON object{where}, got {_type_name(record)}", raw)
            keys = ", ".join(sorted(record)[:20]) or "none"
            wanted = _expected_shapes() if expect is None else f"the envelope says {expect}, but: {_expected_shapes()}"
            return self.reject(None, f"unrecognised record shape{where}: {wanted}; got keys: {keys}", raw)
        return RawRecord(
            origin=self.origin, position=self.take(), kind=kind, record=record, envelope=envelope, line=line
        )


# -- byte sources ------------------------------------------------------------------------------


class _Chunks:
    """Chunks of an input's (decompressed) bytes; ``error`` is set when the stream broke."""

    def __init__(self, stream: BinaryIO):
        self.stream = stream
        self.error: str | None = None
        self.gzipped = False
        self.offset = 0  # bytes (decompressed) delivered so far

    def __iter__(self) -> Iterator[bytes]:
        head = self.stream.read(2)
        while len(head) < 2:  # short reads from pipes
            more = self.stream.read(2 - len(head))
            if not more:
                break
            head += more
        if head == _GZIP_MAGIC:
            self.gzipped = True
            yield from self._gzip(head)
            return
        if head:
            self.offset += len(head)
            yield head
        while True:
            chunk = self.stream.read(_CHUNK)
            if not chunk:
                return
            self.offset += len(chunk)
            yield chunk

    def _gzip(self, head: bytes) -> Iterator[bytes]:
        # zlib with wbits=31 decodes one gzip member; loop for multi-member files (RFC 1952 2.2).
        pending = head
        decomp = zlib.decompressobj(31)
        member_started = True
        while True:
            data = self.stream.read(_CHUNK)
            buf = pending + data
            pending = b""
            if not buf:
                break
            while buf:
                if not member_started:
                    if buf.lstrip(b"\x00") == b"":  # trailing padding after the last member
                        buf = b""
                        break
                    decomp = zlib.decompressobj(31)
                    member_started = True
                try:
                    out = decomp.decompress(buf)
                except zlib.error as exc:
                    self.error = f"corrupt gzip: {exc} (after {self.offset} decompressed bytes)"
                    return
                if out:
                    self.offset += len(out)
                    yield out
                if decomp.eof:
                    buf = decomp.unused_data
                    member_started = False
                else:
                    buf = b""
            if not data:
                break
        if member_started and not decomp.eof:
            self.error = (
                f"truncated gzip: the compressed stream ended before its end marker "
                f"(after {self.offset} decompressed bytes)"
            )


class _Lines:
    """Iterates ``(line number, byte offset, line without its newline, complete)``.

    The last line is ``complete`` only when the stream ended cleanly (a line cut by a truncated
    gzip stream is not). :meth:`rest` hands over the unsplit remainder (buffered bytes, then the
    remaining chunks) once a reader knows it wants the whole document rather than lines.
    """

    def __init__(self, chunks: _Chunks):
        self.chunks = chunks
        self.source = iter(chunks)
        self.buf = bytearray()  # grows in place: a single-line multi-MB file is not copied per chunk
        self.lineno = 0
        self.offset = 0
        self.pending: list[tuple[int, int, bytes, bool]] = []

    def __iter__(self) -> Iterator[tuple[int, int, bytes, bool]]:
        return self

    def __next__(self) -> tuple[int, int, bytes, bool]:
        while not self.pending:
            chunk = next(self.source, None)
            if chunk is None:
                if not self.buf:
                    raise StopIteration
                line = bytes(self.buf)
                self.buf.clear()
                self.lineno += 1
                return self.lineno, self.offset, line, self.chunks.error is None
            searched = len(self.buf)
            self.buf += chunk
            start = 0
            while True:
                nl = self.buf.find(b"\n", max(start, searched))
                if nl < 0:
                    break
                self.lineno += 1
                self.pending.append((self.lineno, self.offset, bytes(self.buf[start:nl]), True))
                self.offset += nl + 1 - start
                start = nl + 1
            del self.buf[:start]
            self.pending.reverse()
        return self.pending.pop()

    def rest(self) -> Iterator[bytes]:
        """The bytes not yet returned as lines, unsplit."""
        while self.pending:
            _, _, line, _ = self.pending.pop()
            yield line + b"\n"
        if self.buf:
            yield bytes(self.buf)
            self.buf.clear()
        yield from self.source


def _decode_line(raw: bytes) -> str:
    return raw.decode("utf-8").lstrip("\ufeff").rstrip("\r")


def _loads_line(raw: bytes) -> tuple[Any, str]:
    """Decode one JSON line; raises ``UnicodeDecodeError`` or ``json.JSONDecodeError``."""
    text = _decode_line(raw)
    return _loads(text), text


# -- readers -----------------------------------------------------------------------------------


def _read_stream(origin: str, stream: BinaryIO) -> Iterator[RawRecord | Rejected]:
    inp = _Input(origin)
    chunks = _Chunks(stream)
    lines = _Lines(chunks)
    consumed: list[tuple[int, int, bytes, bool]] = []

    def next_nonblank() -> tuple[int, int, bytes, bool] | None:
        for item in lines:
            consumed.append(item)
            if item[2].strip():
                return item
        return None

    first = next_nonblank()
    if first is None:
        if chunks.error:
            yield inp.reject(None, chunks.error, "", count=False)
        return
    parsed: dict[int, tuple[Any, str]] = {}
    if _looks_like_json_lines(first, next_nonblank, parsed):
        yield from _read_json_lines(inp, chunks, consumed, lines, parsed)
    else:
        yield from _read_document(inp, chunks, consumed, lines)


def _parses(item: tuple[int, int, bytes, bool] | None, parsed: dict[int, tuple[Any, str]]) -> bool:
    """Whether the line parses as JSON on its own; the result is kept in ``parsed`` (by line
    number) so that the line is never decoded twice."""
    if item is None or not item[3]:
        return False
    try:
        parsed[item[0]] = _loads_line(item[2])
    except (ValueError, UnicodeDecodeError):
        return False
    return True


def _looks_like_json_lines(first, next_nonblank, parsed: dict[int, tuple[Any, str]]) -> bool:
    """JSON lines when the first non-blank line is a JSON value on its own, or, when it is broken,
    the next one is (a pretty-printed document's second line never parses alone). A first line
    longer than ``_BIG_LINE`` (CloudTrail's own single-line ``{"Records": [...]}``) is read as a
    document, so that its records are decoded one at a time."""
    if first[2].lstrip().startswith(b"[") or len(first[2]) > _BIG_LINE:
        return False
    if _parses(first, parsed):
        if parsed[first[0]][0] is _TOO_DEEP and first[2].lstrip().startswith(b"{"):
            # too deep to decode whole (a single-line {"Records": [...]} with one hostile record):
            # read as a document, one record at a time, so only that record is dead-lettered
            del parsed[first[0]]
            return False
        return True
    second = next_nonblank()
    return second is not None and second[2].lstrip().startswith(b"{") and _parses(second, parsed)


def _read_json_lines(
    inp: _Input, chunks: _Chunks, consumed, lines, parsed: dict[int, tuple[Any, str]]
) -> Iterator[RawRecord | Rejected]:
    def all_lines():
        yield from consumed
        yield from lines

    for lineno, offset, raw, complete in all_lines():
        if not raw.strip():
            continue
        if not complete:
            # Cut by a truncated gzip stream: reported once, below, with the partial text.
            yield inp.reject(
                None,
                f"{chunks.error}; the record starting on line {lineno} is incomplete",
                raw.decode("utf-8", errors="replace"),
                count=False,
            )
            return
        try:
            value, text = parsed.pop(lineno) if lineno in parsed else _loads_line(raw)
        except UnicodeDecodeError as exc:
            yield inp.reject(
                None,
                f"not UTF-8 text at line {lineno}, byte {offset + exc.start}: {exc.reason}",
                raw.decode("utf-8", errors="replace"),
            )
            continue
        except json.JSONDecodeError as exc:
            yield inp.reject(
                None,
                f"not JSON at line {lineno}, column {exc.colno} "
                f"(byte {offset + len(exc.doc[: exc.pos].encode())}): {exc.msg}",
                raw.decode("utf-8", errors="replace"),
            )
            continue
        yield from inp.unwrap(value, text, lineno)
    if chunks.error:
        yield inp.reject(None, chunks.error, "", count=False)


class _LineCounter:
    """Line number of a character offset, counted incrementally (offsets only move forward)."""

    def __init__(self, text: str):
        self.text = text
        self.pos = 0
        self.line = 1

    def at(self, pos: int) -> int:
        if pos < self.pos:
            return self.text.count("\n", 0, pos) + 1
        self.line += self.text.count("\n", self.pos, pos)
        self.pos = pos
        return self.line


def _read_document(inp: _Input, chunks: _Chunks, consumed, lines) -> Iterator[RawRecord | Rejected]:
    data = bytearray()
    for _, _, raw, complete in consumed:
        data += raw
        if complete:
            data += b"\n"
    for chunk in lines.rest():
        data += chunk
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        yield inp.reject(
            None,
            f"not UTF-8 text at byte {exc.start}: {exc.reason}",
            data.decode("utf-8", errors="replace"),
            count=False,
        )
        if chunks.error:
            yield inp.reject(None, chunks.error, "", count=False)
        return
    del data
    lc = _LineCounter(text)
    truncated = chunks.error

    def fail(pos: int, msg: str, start: int) -> Rejected:
        line = lc.at(pos)
        col = pos - (text.rfind("\n", 0, pos) + 1) + 1
        if truncated:
            return inp.reject(
                None,
                f"{truncated}; the JSON document is incomplete at line {line}",
                text[start:],
                count=False,
            )
        return inp.reject(
            None,
            f"not JSON at line {line}, column {col} (byte {len(text[:pos].encode())}): {msg}",
            text[start:],
        )

    pos = _WS.match(text, 0).end()
    if pos == len(text):
        if truncated:
            yield inp.reject(None, truncated, "", count=False)
        return
    while pos < len(text):
        ch = text[pos]
        if ch == "[":
            result = yield from _read_array(inp, text, pos, lc, fail)
            if result is None:
                return
            pos = result
        elif ch == "{":
            result = yield from _read_object(inp, text, pos, lc, fail)
            if result is None:
                return
            pos = result
        else:
            try:
                value, end = _raw_decode(text, pos)
            except json.JSONDecodeError as exc:
                yield fail(exc.pos, exc.msg, pos)
                return
            yield from inp.unwrap(value, text[pos:end], lc.at(pos))
            pos = end
        pos = _WS.match(text, pos).end()
    if truncated:
        yield inp.reject(None, truncated, "", count=False)


# Arrays and objects are walked by hand so that each item is decoded on its own. Both walkers
# are generators that return the position after the value, or None after a parse failure.


def _read_array(inp: _Input, text: str, start: int, lc: _LineCounter, fail):
    """Walk one top-level array, unwrapping each item. Returns the end position or ``None``."""
    pos = _WS.match(text, start + 1).end()
    if pos < len(text) and text[pos] == "]":
        return pos + 1
    while True:
        try:
            value, end = _raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            yield fail(exc.pos, exc.msg, pos)
            return None
        yield from inp.unwrap(value, text[pos:end], lc.at(pos))
        pos = _WS.match(text, end).end()
        if pos < len(text) and text[pos] == ",":
            pos = _WS.match(text, pos + 1).end()
            continue
        if pos < len(text) and text[pos] == "]":
            return pos + 1
        yield fail(pos, "expected ',' or ']' after an array item", pos)
        return None


def _read_object(inp: _Input, text: str, start: int, lc: _LineCounter, fail):
    """Walk one top-level object. A ``Records`` / ``Findings`` array is yielded item by item
    (each classified directly); any other object is unwrapped as a whole. Returns the end
    position, or ``None`` after a parse failure."""
    line = lc.at(start)
    pairs: list[tuple[str, Any]] = []  # duplicate keys are marked as in any other object (_object_pairs)
    seen: set[str] = set()
    streamed = False
    pos = _WS.match(text, start + 1).end()
    if pos < len(text) and text[pos] == "}":
        yield from inp.unwrap({}, text[start : pos + 1], line)
        return pos + 1
    while True:
        if pos >= len(text) or text[pos] != '"':
            yield fail(pos, "expected a property name in double quotes", start)
            return None
        key_pos = pos
        try:
            key, pos = _raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            yield fail(exc.pos, exc.msg, start)
            return None
        pos = _WS.match(text, pos).end()
        if pos >= len(text) or text[pos] != ":":
            yield fail(pos, "expected ':' after a property name", start)
            return None
        pos = _WS.match(text, pos + 1).end()
        duplicate = key in seen
        seen.add(key)
        if duplicate and streamed:
            # The first array's records were read: this member is dead-lettered, not ignored.
            try:
                _, pos = _raw_decode(text, pos)
            except json.JSONDecodeError as exc:
                yield fail(exc.pos, exc.msg, start)
                return None
            yield inp.reject(_clean(key), f"duplicate key {_clean(key)!r} in one object (line {lc.at(key_pos)}); "
                             "which value is meant is not guessed", text[key_pos:pos])
        elif (key in ("Records", "Findings", "records") and not streamed
              and len(seen) == len(pairs) + 1  # no key repeated so far (else dead-lettered whole, as on one line)
              and pos < len(text) and text[pos] == "["):
            streamed = True
            item_pos = _WS.match(text, pos + 1).end()
            if item_pos < len(text) and text[item_pos] == "]":
                pos = item_pos + 1
            else:
                while True:
                    try:
                        value, end = _raw_decode(text, item_pos)
                    except json.JSONDecodeError as exc:
                        yield fail(exc.pos, exc.msg, item_pos)
                        return None
                    yield inp.leaf(value, text[item_pos:end], lc.at(item_pos), None)
                    item_pos = _WS.match(text, end).end()
                    if item_pos < len(text) and text[item_pos] == ",":
                        item_pos = _WS.match(text, item_pos + 1).end()
                        continue
                    if item_pos < len(text) and text[item_pos] == "]":
                        pos = item_pos + 1
                        break
                    yield fail(item_pos, f"expected ',' or ']' in the {key} array", item_pos)
                    return None
        else:
            try:
                value, pos = _raw_decode(text, pos)
            except json.JSONDecodeError as exc:
                yield fail(exc.pos, exc.msg, start)
                return None
            pairs.append((key, value))
        pos = _WS.match(text, pos).end()
        if pos < len(text) and text[pos] == ",":
            pos = _WS.match(text, pos + 1).end()
            continue
        if pos < len(text) and text[pos] == "}":
            pos += 1
            break
        yield fail(pos, "expected ',' or '}' after an object member", start)
        return None
    if not streamed:
        yield from inp.unwrap(_object_pairs(pairs), text[start:pos], line)
    return pos


def read_inputs(sources: Iterable[str | Path], stdin: BinaryIO | None = None) -> Iterator[RawRecord | Rejected]:
    """Read every input in ``sources`` and yield its records, unwrapped and classified.

    ``sources`` are paths; ``"-"`` means standard input, read as bytes from ``stdin`` (default
    ``sys.stdin.buffer``) and named ``<stdin>``. Each input's format is detected from its
    content (see the module docstring). Yields :class:`RawRecord` for each CloudTrail event,
    GuardDuty finding, ASFF finding, Cloud Audit Log entry, SCC finding, Entra audit or sign-in
    record and Activity Log event, and
    :class:`Rejected` for an input that cannot be opened, text that is not JSON (naming the line,
    column and byte), a record of an unknown shape (naming
    the keys expected and the keys found), a Pub/Sub ``message.data`` that is not base64 of JSON
    (naming ``message.data``), a non-object value, or a truncated / corrupt gzip
    stream (after every complete record before the cut). Never raises for bad content.
    """
    for source in sources:
        if str(source) == "-":
            origin = "<stdin>"
            stream = stdin if stdin is not None else sys.stdin.buffer
            yield from _read_stream(origin, stream)
            continue
        origin = str(source)
        try:
            fh = open(source, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            yield Rejected(
                origin=origin,
                position=None,
                field=None,
                reason=f"cannot open: {exc.strerror or exc}",
                raw_text="",
            )
            continue
        with fh:
            try:
                yield from _read_stream(origin, fh)
            except OSError as exc:  # e.g. a read error, a directory on some systems
                yield Rejected(
                    origin=origin,
                    position=None,
                    field=None,
                    reason=f"cannot read: {exc.strerror or exc}",
                    raw_text="",
                )


def read_bytes(origin: str, data: bytes) -> Iterator[RawRecord | Rejected]:
    """Like :func:`read_inputs` for one input already in memory (a webhook body), named ``origin``."""
    import io

    yield from _read_stream(origin, io.BytesIO(data))


__all__ = ["RAW_TEXT_CAP", "RawRecord", "cap_text", "classify", "read_bytes", "read_inputs"]
