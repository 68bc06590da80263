"""Peer identity: an ed25519 signing key persisted on disk, and the libp2p key beside it.

``Identity.load_or_create(path)`` creates ``path`` (PKCS#8 PEM, mode 0600) on first use and loads
it afterwards; the libp2p identity that hivemind's P2P daemon uses lives at ``path + ".p2p"`` so
that the transport peer id is stable across restarts too. A corrupt, foreign or world-readable
key file raises :class:`~dai_swarm.errors.IdentityError`; a new key is never made silently in
place of an unreadable one.
"""

from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import IdentityError

__all__ = ["Identity", "verify_signature"]


def verify_signature(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """Return True iff ``signature`` is a valid ed25519 signature of ``message`` by ``public_key``.

    Never raises on bad input: malformed keys or signatures simply do not verify.
    """
    if not isinstance(public_key, (bytes, bytearray)) or len(public_key) != 32:
        return False
    if not isinstance(signature, (bytes, bytearray)) or len(signature) != 64:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(bytes(public_key)).verify(bytes(signature), bytes(message))
        return True
    except (InvalidSignature, ValueError):
        return False


@dataclass(frozen=True)
class Identity:
    """An ed25519 key pair that signs everything a peer publishes.

    ``path`` is where it lives on disk (None for an ephemeral identity); ``p2p_identity_path`` is
    the file hivemind's P2P daemon reads its libp2p key from (None: a fresh libp2p key each run).
    """

    private_key: Ed25519PrivateKey
    path: str | None = None

    @classmethod
    def generate(cls) -> "Identity":
        """A fresh in-memory identity (tests, throwaway peers)."""
        return cls(Ed25519PrivateKey.generate(), None)

    @classmethod
    def load_or_create(cls, path: str) -> "Identity":
        """Load the key at ``path``, creating it (mode 0600, atomically) if it does not exist."""
        path = os.path.abspath(os.path.expanduser(path))
        if not os.path.exists(path):
            directory = os.path.dirname(path)
            if not os.path.isdir(directory):
                raise IdentityError(f"cannot create identity {path!r}: directory {directory!r} does not exist")
            key = Ed25519PrivateKey.generate()
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".identity-")
            try:
                os.fchmod(fd, 0o600)
                os.write(fd, pem)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            return cls(key, path)
        return cls.load(path)

    @classmethod
    def load(cls, path: str) -> "Identity":
        """Load an existing key; raise :class:`IdentityError` if unreadable, corrupt or foreign."""
        path = os.path.abspath(os.path.expanduser(path))
        try:
            mode = os.stat(path).st_mode
            with open(path, "rb") as f:
                data = f.read(64 * 1024)
        except OSError as e:
            raise IdentityError(f"cannot read identity file {path!r}: {e.strerror}") from e
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise IdentityError(
                f"identity file {path!r} is readable by others (mode {oct(mode & 0o777)}); run: chmod 600 {path}"
            )
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as e:
            raise IdentityError(
                f"identity file {path!r} is not a valid PEM private key ({e}); "
                "restore it from a backup or pass another --identity path"
            ) from e
        if not isinstance(key, Ed25519PrivateKey):
            raise IdentityError(f"identity file {path!r} holds a {type(key).__name__}, not an ed25519 key")
        return cls(key, path)

    @property
    def p2p_identity_path(self) -> str | None:
        """Path of the libp2p key file kept beside the ed25519 key (None for ephemeral identities)."""
        return None if self.path is None else self.path + ".p2p"

    @property
    def public_key(self) -> bytes:
        """The 32 raw bytes of the public key."""
        return self.private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def public_key_hex(self) -> str:
        """Hex of the public key: this peer's stable name in records and logs."""
        return self.public_key.hex()

    def sign(self, message: bytes) -> bytes:
        """Sign ``message``; returns the 64-byte ed25519 signature."""
        return self.private_key.sign(message)
