"""Identity keys: created 0600, stable across restarts (ed25519 and libp2p peer id), never replaced silently."""

import os
import stat

import pytest

from dai_swarm.errors import IdentityError
from dai_swarm.identity import Identity, verify_signature


def test_created_0600_and_stable(tmp_path):
    path = str(tmp_path / "peer.key")
    a = Identity.load_or_create(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    b = Identity.load_or_create(path)
    assert a.public_key == b.public_key
    sig = a.sign(b"hello")
    assert verify_signature(b.public_key, sig, b"hello")
    assert not verify_signature(b.public_key, sig, b"hellO")
    assert a.p2p_identity_path == path + ".p2p"


def test_corrupt_key_raises_and_file_is_kept(tmp_path):
    path = tmp_path / "peer.key"
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    os.chmod(path, 0o600)
    with pytest.raises(IdentityError, match="not a valid PEM"):
        Identity.load_or_create(str(path))
    assert b"not base64" in path.read_bytes()  # never silently replaced


def test_foreign_key_type_raises(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = tmp_path / "ec.key"
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    os.chmod(path, 0o600)
    with pytest.raises(IdentityError, match="not an ed25519"):
        Identity.load(str(path))


def test_world_readable_key_raises(tmp_path):
    path = str(tmp_path / "peer.key")
    Identity.load_or_create(path)
    os.chmod(path, 0o644)
    with pytest.raises(IdentityError, match="readable by others"):
        Identity.load_or_create(path)


def test_unreadable_key_raises(tmp_path):
    path = tmp_path / "dir.key"
    path.mkdir(mode=0o700)  # exists but cannot be read as a file
    with pytest.raises(IdentityError, match="cannot read"):
        Identity.load(str(path))
    with pytest.raises(IdentityError, match="does not exist"):
        Identity.load_or_create(str(tmp_path / "missing" / "peer.key"))


def test_corrupt_p2p_identity_raises(tmp_path):
    from dai_swarm.dht.node import SwarmDHT

    identity = Identity.load_or_create(str(tmp_path / "peer.key"))
    with open(identity.p2p_identity_path, "wb") as f:
        f.write(b"garbage")
    os.chmod(identity.p2p_identity_path, 0o400)
    with pytest.raises(IdentityError, match="corrupt"):
        SwarmDHT(identity)
    os.chmod(identity.p2p_identity_path, 0o644)
    with pytest.raises(IdentityError, match="readable by others"):
        SwarmDHT(identity)


@pytest.mark.integration
def test_libp2p_peer_id_stable_across_restart(tmp_path):
    from dai_swarm.dht.node import SwarmDHT
    from dai_swarm.testing import SocketGuard

    path = str(tmp_path / "peer.key")
    with SocketGuard():
        with SwarmDHT(Identity.load_or_create(path)) as dht:
            first = dht.peer_id
        assert stat.S_IMODE(os.stat(path + ".p2p").st_mode) & 0o077 == 0
        with SwarmDHT(Identity.load_or_create(path)) as dht:
            assert dht.peer_id == first
