"""opsgate.audit: the append-only, hash-chained audit log (writer, verifier, checkpoints, reader, redaction).

Hashing, signing bodies, redaction and filter parsing are pure functions
(``chain``, ``checkpoint``, ``redact``, ``query``); file I/O lives in ``log``
(the writer), ``verify`` and ``query`` (the readers) and the key-file helpers;
``cli`` is the reviewer's command line.
"""

from .chain import GENESIS_HASH, canonical, record_hash, seal
from .checkpoint import KeyRing, generate_keypair
from .log import SCHEMA_VERSION, AuditLog, AuditTrustError, AuditWriteError
from .redact import REDACTED, redact
from .verify import CheckpointSummary, VerifyReport, verify_audit, verify_log

__all__ = [
    "GENESIS_HASH",
    "REDACTED",
    "SCHEMA_VERSION",
    "AuditLog",
    "AuditTrustError",
    "AuditWriteError",
    "CheckpointSummary",
    "KeyRing",
    "VerifyReport",
    "canonical",
    "generate_keypair",
    "record_hash",
    "redact",
    "seal",
    "verify_audit",
    "verify_log",
]
