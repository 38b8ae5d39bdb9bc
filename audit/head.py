"""What a writer's callers read of its chain head and checkpoint key: the same for the file log and PostgreSQL."""

from __future__ import annotations

from .checkpoint import Signer

__all__ = ["WriterHead"]


class WriterHead:
    """Read-only views of the state every audit writer keeps: its signer and the last record it wrote or saw."""

    _signer: Signer
    _last_seq: int
    _last_hash: str

    @property
    def key_id(self) -> str:
        """``alg key_id`` of the key that signs this writer's checkpoints."""
        return f"{self._signer.alg} {self._signer.key_id}"

    @property
    def checkpoint_key(self) -> dict[str, str]:
        """``{alg, key_id}`` of the checkpoint key, for the start record: tells verify that checkpoints must exist."""
        return {"alg": self._signer.alg, "key_id": self._signer.key_id}

    @property
    def last_seq(self) -> int:
        """Seq of the last record this writer wrote or saw (0 for an empty log)."""
        return self._last_seq

    @property
    def last_hash(self) -> str:
        """Hash of that record (``GENESIS_HASH`` for an empty log)."""
        return self._last_hash
