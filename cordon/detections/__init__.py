"""Detections: reading inputs, recognising their format, normalising to :class:`Detection`."""

from cordon.detections.errors import RecordError, Rejected
from cordon.detections.model import Actor, Credential, Detection, Principal, RawRef, RuleRef

__all__ = ["Actor", "Credential", "Detection", "Principal", "RawRef", "RecordError", "Rejected", "RuleRef"]
