"""opsgate.audit: the append-only, hash-chained audit log (writer, verifier, redaction).

Hashing and redaction are pure functions (``chain``, ``redact``); file I/O lives
only in ``log`` (the writer) and ``verify`` (the reader).
"""

from .chain import GENESIS_HASH, canonical, record_hash, seal
from .log import AuditLog, AuditWriteError
from .redact import REDACTED, redact
from .verify import VerifyReport, verify_log

__all__ = [
    "GENESIS_HASH",
    "REDACTED",
    "AuditLog",
    "AuditWriteError",
    "VerifyReport",
    "canonical",
    "record_hash",
    "redact",
    "seal",
    "verify_log",
]
