"""The audit ledger (hash-chained, append-only) and its readers."""

from cordon.audit.ledger import Ledger, LedgerRecord, VerifyResult, redact

__all__ = ["Ledger", "LedgerRecord", "VerifyResult", "redact"]
