"""Signed checkpoints of the audit log's head, kept outside the log.

The hash chain shows that no record was changed, removed or inserted *before*
the last one, but a log cut short, or replaced whole by a fresh valid chain,
is still a valid chain. A checkpoint is a signed statement "the log named
ORIGIN had SIZE records and its last hash was HEAD at TIME"; the writer adds
one to ``<log>.checkpoints`` at start, at stop, at each rotation and every N
records. Verify then demands that the log still holds each checkpointed
(seq, hash): a log that ends earlier was truncated, a different hash at that
seq means the log was rewritten.

The signed body has the shape of a transparency-log checkpoint (C2SP
``tlog-checkpoint``: origin line, size line, hash line, extension lines), with
the head hash in hex like everywhere else in the log::

    opsgate.audit/host/var/log/opsgate/audit.jsonl
    2000
    5f1c...e9
    time 2025-06-01T12:00:00.000000Z
    event every

Signatures: Ed25519 (anyone holding the public key can check, only the holder
of the private key can sign), or, when no key pair is configured, HMAC-SHA256
with a local key file. HMAC proves integrity only to holders of that key, and
anyone who can read that key can forge checkpoints: keep a copy of the key (or
better, use Ed25519 and keep the private key readable only by the server).

Everything here is pure except the key-file helpers at the end.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

# cryptography is imported where an Ed25519 key is used, not here: a server without a signing key
# (HMAC checkpoints) never needs it, and its import is a few milliseconds of every start (issue 18).
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .chain import canonical, is_hash, loads

__all__ = [
    "CHECKPOINT_VERSION",
    "ED25519",
    "HMAC_SHA256",
    "Checkpoint",
    "Ed25519Signer",
    "HmacSigner",
    "KeyRing",
    "SignedCheckpoint",
    "Signer",
    "checkpoint_line",
    "generate_keypair",
    "load_hmac_key",
    "load_or_create_hmac_key",
    "load_private_key",
    "load_public_key",
    "parse_checkpoint_line",
    "ring_for",
]

CHECKPOINT_VERSION = 1
ED25519 = "ed25519"
HMAC_SHA256 = "hmac-sha256"
EVENTS = frozenset({"start", "stop", "every", "rotate"})
_HMAC_KEY_BYTES = 32


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint says: the log ``origin`` had ``size`` records ending in ``head``."""

    origin: str
    size: int
    head: str
    time: str
    event: str

    def body(self) -> bytes:
        """The exact bytes signed: the note text (see the module doc)."""
        return f"{self.origin}\n{self.size}\n{self.head}\ntime {self.time}\nevent {self.event}\n".encode()


class Signer(Protocol):
    """Signs checkpoint bodies; ``key_id`` lets a verifier pick the key."""

    @property
    def alg(self) -> str: ...

    @property
    def key_id(self) -> str: ...

    def sign(self, message: bytes) -> bytes: ...


def ed25519_key_id(public: Ed25519PublicKey) -> str:
    """First 4 bytes (hex) of SHA-256 of the raw public key: names the key, proves nothing."""
    from cryptography.hazmat.primitives import serialization

    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:8]


def hmac_key_id(key: bytes) -> str:
    """First 4 bytes (hex) of a hash of the key under a fixed label: names the key without revealing it."""
    return hashlib.sha256(b"opsgate.audit hmac key id\n" + key).hexdigest()[:8]


@dataclass(frozen=True)
class Ed25519Signer:
    private: Ed25519PrivateKey

    @property
    def alg(self) -> str:
        return ED25519

    @property
    def key_id(self) -> str:
        return ed25519_key_id(self.private.public_key())

    def sign(self, message: bytes) -> bytes:
        return self.private.sign(message)


@dataclass(frozen=True)
class HmacSigner:
    key: bytes = field(repr=False)

    @property
    def alg(self) -> str:
        return HMAC_SHA256

    @property
    def key_id(self) -> str:
        return hmac_key_id(self.key)

    def sign(self, message: bytes) -> bytes:
        return hmac.new(self.key, message, hashlib.sha256).digest()


def _clean_origin(origin: str) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in origin) or "-"


def checkpoint_line(checkpoint: Checkpoint, signer: Signer) -> bytes:
    """One line of the checkpoints file (canonical JSON, no newline) for ``checkpoint`` signed by ``signer``."""
    checkpoint = Checkpoint(
        _clean_origin(checkpoint.origin), checkpoint.size, checkpoint.head, checkpoint.time, checkpoint.event
    )
    signature = signer.sign(checkpoint.body())
    return canonical(
        {
            "v": CHECKPOINT_VERSION,
            "origin": checkpoint.origin,
            "size": checkpoint.size,
            "hash": checkpoint.head,
            "time": checkpoint.time,
            "event": checkpoint.event,
            "alg": signer.alg,
            "key_id": signer.key_id,
            "sig": base64.b64encode(signature).decode(),
        }
    )


@dataclass(frozen=True)
class SignedCheckpoint:
    checkpoint: Checkpoint
    alg: str
    key_id: str
    signature: bytes


def parse_checkpoint_line(line: bytes) -> SignedCheckpoint:
    """Parse one checkpoints-file line; ValueError says what is wrong with it."""
    obj: Any = loads(line)
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    if obj.get("v") != CHECKPOINT_VERSION:
        raise ValueError(f"unknown checkpoint version {obj.get('v')!r}")
    size, head = obj.get("size"), obj.get("hash")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError("no valid size")
    if not is_hash(head):
        raise ValueError("no valid hash")
    for name in ("origin", "time", "event", "alg", "key_id", "sig"):
        if not isinstance(obj.get(name), str):
            raise ValueError(f"no valid {name}")
    try:
        signature = base64.b64decode(obj["sig"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"signature is not base64: {exc}") from None
    checkpoint = Checkpoint(obj["origin"], size, str(head), obj["time"], obj["event"])
    return SignedCheckpoint(checkpoint, obj["alg"], obj["key_id"], signature)


@dataclass(frozen=True)
class KeyRing:
    """The keys a reviewer trusts. ``check`` says whether a checkpoint's signature holds.

    ``strict``: a checkpoint signed by a key not in the ring is damage (the
    reviewer named the keys), rather than merely unchecked (a key found beside
    the log, which cannot vouch for checkpoints it did not sign).
    """

    public_keys: tuple[Ed25519PublicKey, ...] = ()
    hmac_keys: tuple[bytes, ...] = ()
    strict: bool = True

    def __bool__(self) -> bool:
        return bool(self.public_keys or self.hmac_keys)

    def key_ids(self) -> list[str]:
        return [f"{ED25519} {ed25519_key_id(k)}" for k in self.public_keys] + [
            f"{HMAC_SHA256} {hmac_key_id(k)}" for k in self.hmac_keys
        ]

    def check(self, signed: SignedCheckpoint) -> str | None:
        """None when a key in the ring signed it; else ``unknown-key`` or ``bad-signature``."""
        body = signed.checkpoint.body()
        if signed.alg == ED25519:
            from cryptography.exceptions import InvalidSignature

            publics = [k for k in self.public_keys if ed25519_key_id(k) == signed.key_id]
            for public in publics:
                with contextlib.suppress(InvalidSignature):
                    public.verify(signed.signature, body)
                    return None
            return "bad-signature" if publics else "unknown-key"
        if signed.alg == HMAC_SHA256:
            keys = [k for k in self.hmac_keys if hmac_key_id(k) == signed.key_id]
            for key in keys:
                if hmac.compare_digest(hmac.new(key, body, hashlib.sha256).digest(), signed.signature):
                    return None
            return "bad-signature" if keys else "unknown-key"
        return "unknown-key"


def ring_for(signer: Signer) -> KeyRing:
    """The ring holding just ``signer``'s key: what a writer trusts when it reads back its own checkpoints."""
    if isinstance(signer, Ed25519Signer):
        return KeyRing(public_keys=(signer.private.public_key(),))
    if isinstance(signer, HmacSigner):
        return KeyRing(hmac_keys=(signer.key,))
    return KeyRing()


# --- key files (I/O) ------------------------------------------------------------------------------


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``data`` and ``mode``; refuse to overwrite anything."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow what we promise
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def generate_keypair(private_path: Path, public_path: Path | None = None) -> tuple[Path, Path, str]:
    """Write a new Ed25519 key pair: private PKCS#8 PEM (0600, unencrypted so the server can
    start unattended) and public SubjectPublicKeyInfo PEM (0644, default ``<private>.pub``).

    Returns (private path, public path, key id). Raises FileExistsError rather than overwrite a key.
    """
    public_path = public_path or private_path.with_name(private_path.name + ".pub")
    for target in (private_path, public_path):
        if os.path.lexists(target):
            raise FileExistsError(f"{target} exists; refusing to overwrite a key")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new(private_path, private_pem, 0o600)
    try:
        _write_new(public_path, public_pem, 0o644)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(private_path)
        raise
    return private_path, public_path, ed25519_key_id(private.public_key())


def load_private_key(path: Path) -> Ed25519Signer:
    """The Ed25519 signer in a PEM private key file. Raises OSError or ValueError."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return Ed25519Signer(key)


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The Ed25519 public key in a PEM file. Raises OSError or ValueError."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 public key")
    return key


def _parse_hmac_key(text: bytes, path: Path) -> bytes:
    try:
        key = bytes.fromhex(text.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise ValueError(f"{path} is not an HMAC key file (hex digits)") from None
    if len(key) < 16:
        raise ValueError(f"{path} holds a key of {len(key)} bytes; at least 16 are needed")
    return key


def load_hmac_key(path: Path) -> bytes:
    """The key in an HMAC key file (hex text). Raises OSError or ValueError."""
    return _parse_hmac_key(path.read_bytes(), path)


def _sweep_stale_temporaries(path: Path) -> None:
    """Remove ``.<name>.<pid>.<random>`` files left by a creator killed mid-way (each is a copy of a key)."""
    prefix = f".{path.name}."
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        pid, _, rest = name[len(prefix) :].partition(".") if name.startswith(prefix) else ("", "", "")
        if not pid.isdigit() or not rest or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                os.unlink(path.with_name(name))
        except OSError:
            pass  # alive, under another user


def load_or_create_hmac_key(path: Path) -> bytes:
    """Read the HMAC key at ``path``, creating a random one (0600) first if there is none.

    Created under a temporary name and hard-linked into place, so a second
    process racing to create it reads a whole key, never an empty file; the
    temporary copies of creators that were killed half-way are removed.
    """
    _sweep_stale_temporaries(path)
    try:
        return load_hmac_key(path)
    except FileNotFoundError:
        pass
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    _write_new(temp, secrets.token_hex(_HMAC_KEY_BYTES).encode() + b"\n", 0o600)
    try:
        with contextlib.suppress(FileExistsError):
            os.link(temp, path)
    finally:
        os.unlink(temp)
    return load_hmac_key(path)
