"""Errors raised while reading and parsing detections, and the dead-letter shape.

A record that cannot be parsed is never dropped: it becomes a :class:`Rejected`, which the
caller writes to the ledger's dead-letter table and reports by origin, position and field.
"""

from __future__ import annotations

from pydantic import BaseModel


class RecordError(ValueError):
    """A raw record that cannot become a detection.

    ``origin`` names the input (a file path, ``<stdin>``, ``webhook``), ``position`` is the
    record's 0-based index within it after unwrapping envelopes (``None`` when the whole input
    is unreadable, e.g. truncated gzip), ``field`` the dotted path of the field at fault
    (``responseElements.accessKey.accessKeyId``) or ``None`` when the record as a whole is
    unusable, and ``reason`` says what is wrong with it.
    """

    def __init__(self, origin: str, position: int | None, field: str | None, reason: str):
        self.origin = origin
        self.position = position
        self.field = field
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.origin if self.position is None else f"{self.origin}: record {self.position}"
        if self.field:
            return f"{where}: field '{self.field}': {self.reason}"
        return f"{where}: {self.reason}"


class Rejected(BaseModel):
    """A record (or a whole input) that was refused, as kept in the dead-letter table.

    ``raw_text`` is the record as read (JSON text, or the undecodable bytes as text with
    replacement characters), so nothing is lost.
    """

    origin: str
    position: int | None
    field: str | None
    reason: str
    raw_text: str

    @classmethod
    def from_error(cls, err: RecordError, raw_text: str) -> Rejected:
        """Build the dead-letter entry for ``err`` with the record's text."""
        return cls(origin=err.origin, position=err.position, field=err.field, reason=err.reason,
                   raw_text=raw_text)

    def message(self) -> str:
        """One line naming the input, the record's position and the field, as printed to users."""
        return str(RecordError(self.origin, self.position, self.field, self.reason))
