"""The hall's Ed25519 signing key and the keyring of its public keys.

Layout of a key directory (``hcp keys init --dir DIR``)::

    DIR/signing.key             private key, PKCS#8 PEM, mode 0600, never logged
    DIR/keyring/<keyId>.pem     public keys, current and retired (SubjectPublicKeyInfo PEM)

``keyId`` is the first 16 hex digits of SHA-256 over the raw 32-byte public
key; the full digest is the fingerprint a hall registers with the province.
Every batch header names the key that signed it, so a rotation (``hcp keys
rotate``) only adds a public key to the keyring: old batches stay verifiable.
The retired private key is deleted, never archived.

This module never prints, logs or puts into an exception the private key.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

SIGNING_KEY = "signing.key"
KEYRING = "keyring"
KEY_MODE = 0o600


class KeyFileError(Exception):
    """A key file is missing, unreadable, has unsafe permissions or is not Ed25519."""


def _raw(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(pub: Ed25519PublicKey) -> str:
    return hashlib.sha256(_raw(pub)).hexdigest()


def key_id(pub: Ed25519PublicKey) -> str:
    return fingerprint(pub)[:16]


def public_pem(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    fingerprint: str
    public_pem: str
    public_b64: str  # raw 32 bytes, base64: the form some provincial portals ask for
    path: str

    def as_dict(self) -> dict[str, str]:
        return {
            "keyId": self.key_id,
            "fingerprint": self.fingerprint,
            "publicKeyPem": self.public_pem,
            "publicKeyBase64": self.public_b64,
            "path": self.path,
        }


def _info(pub: Ed25519PublicKey, path: Path) -> KeyInfo:
    return KeyInfo(
        key_id=key_id(pub),
        fingerprint=fingerprint(pub),
        public_pem=public_pem(pub).decode(),
        public_b64=base64.b64encode(_raw(pub)).decode(),
        path=str(path),
    )


def _write_private(path: Path, key: Ed25519PrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = path.with_name(path.name + ".new")
    if tmp.exists():
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_MODE)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, KEY_MODE)  # umask cannot widen it, but be explicit
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _add_to_keyring(dir_: Path, pub: Ed25519PublicKey) -> Path:
    ring = dir_ / KEYRING
    ring.mkdir(parents=True, exist_ok=True)
    p = ring / (key_id(pub) + ".pem")
    p.write_bytes(public_pem(pub))
    return p


def init(dir_: str | Path, force: bool = False) -> KeyInfo:
    """Create DIR/signing.key (0600) and add its public key to DIR/keyring."""
    d = Path(dir_)
    d.mkdir(parents=True, exist_ok=True)
    path = d / SIGNING_KEY
    if path.exists() and not force:
        raise KeyFileError(f"{path} exists; use rotate to replace it")
    key = Ed25519PrivateKey.generate()
    _write_private(path, key)
    _add_to_keyring(d, key.public_key())
    return _info(key.public_key(), path)


def rotate(dir_: str | Path) -> tuple[KeyInfo, KeyInfo]:
    """Replace the signing key; the old public key stays in the keyring."""
    d = Path(dir_)
    old = load_private(d)
    _add_to_keyring(d, old.public_key())
    new = init(d, force=True)
    return _info(old.public_key(), d / SIGNING_KEY), new


def load_private(dir_or_file: str | Path) -> Ed25519PrivateKey:
    p = Path(dir_or_file)
    if p.is_dir():
        p = p / SIGNING_KEY
    try:
        st = p.stat()
    except OSError as e:
        raise KeyFileError(f"no signing key at {p} (run `hcp keys init`)") from e
    if st.st_mode & 0o077:
        raise KeyFileError(f"{p} is readable by group or others (chmod 600 it)")
    try:
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise KeyFileError(f"{p} is not a readable PEM private key") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{p} is not an Ed25519 key")
    return key


def load_public(path: str | Path) -> Ed25519PublicKey:
    p = Path(path)
    try:
        key = serialization.load_pem_public_key(p.read_bytes())
    except (OSError, ValueError) as e:
        raise KeyFileError(f"{p} is not a readable PEM public key") from e
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{p} is not an Ed25519 public key")
    return key


class Keyring:
    """Public keys by keyId: the verifier's side of rotation."""

    def __init__(self, keys: dict[str, Ed25519PublicKey] | None = None) -> None:
        self.keys: dict[str, Ed25519PublicKey] = dict(keys or {})

    def add(self, pub: Ed25519PublicKey) -> str:
        kid = key_id(pub)
        self.keys[kid] = pub
        return kid

    @classmethod
    def load(cls, *paths: str | Path) -> Keyring:
        """From PEM files, key directories (DIR/keyring) or keyring directories."""
        ring = cls()
        for path in paths:
            p = Path(path)
            if p.is_dir():
                sub = p / KEYRING if (p / KEYRING).is_dir() else p
                for f in sorted(sub.glob("*.pem")):
                    ring.add(load_public(f))
            else:
                ring.add(load_public(p))
        return ring

    def verify(self, kid: str, signature: bytes, data: bytes) -> bool:
        pub = self.keys.get(kid)
        if pub is None:
            return False
        try:
            pub.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def __contains__(self, kid: object) -> bool:
        return kid in self.keys

    def __len__(self) -> int:
        return len(self.keys)


def info(dir_: str | Path) -> KeyInfo:
    d = Path(dir_)
    key = load_private(d)
    return _info(key.public_key(), d / SIGNING_KEY if d.is_dir() else d)
