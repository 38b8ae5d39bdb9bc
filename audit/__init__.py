"""opsgate.audit: the append-only, hash-chained audit log (writer, verifier, checkpoints, reader, redaction).

Hashing, signing bodies, redaction and filter parsing are pure functions
(``chain``, ``checkpoint``, ``redact``, ``query``); file I/O lives in ``log``
(the writer), ``verify`` and ``query`` (the readers) and the key-file helpers;
``cli`` is the reviewer's command line.
"""

from typing import TYPE_CHECKING, Any

from .chain import GENESIS_HASH, canonical, record_hash, seal
from .checkpoint import KeyRing, generate_keypair
from .log import SCHEMA_VERSION, AuditLog, AuditTrustError, AuditWriteError
from .redact import REDACTED, redact

if TYPE_CHECKING:
    from .verify import CheckpointSummary, VerifyReport, verify_audit, verify_log

# The verifier (and multiprocessing, which it runs on) is imported on first use: the server that writes
# the log never verifies it, and `opsgate serve` should not pay for the import at start (issue 18).
_VERIFY = frozenset({"CheckpointSummary", "VerifyReport", "verify_audit", "verify_log"})


def __getattr__(name: str) -> Any:
    if name in _VERIFY:
        from . import verify

        return getattr(verify, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

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
