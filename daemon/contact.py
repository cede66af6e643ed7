"""Applicants' contacts (for the 差评 callback), encrypted at rest.

What it must never do: write a contact anywhere but ``cases.contact_enc``
(AES-256-GCM, the case number as associated data), log one, or accept a key
file others can read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from haochaping.daemon.store import StoreError

CONTACT_KEY_LEN = 32  # AES-256-GCM
NONCE_LEN = 12


class ContactKeyError(StoreError):
    """The contact key file is missing, malformed or readable by others."""


class ContactCipher:
    """AES-256-GCM for applicants' contacts.  The key file is 32 random bytes,
    mode 0600, created on first use; a key file others can read is refused."""

    def __init__(self, key_path: str | os.PathLike[str]) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        p = Path(key_path)
        if not p.exists():
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.fchmod(fd, 0o600)  # whatever the umask
                os.write(fd, os.urandom(CONTACT_KEY_LEN))
                os.fsync(fd)
            finally:
                os.close(fd)
        st = p.stat()
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise ContactKeyError(
                f"contact key file {p} must be mode 0600 (it is {stat.S_IMODE(st.st_mode):o})"
            )
        key = p.read_bytes()
        if len(key) != CONTACT_KEY_LEN:
            raise ContactKeyError(f"contact key file {p} must hold {CONTACT_KEY_LEN} bytes")
        self._aead = AESGCM(key)

    def encrypt(self, contact: str, case_no: str) -> bytes:
        nonce = os.urandom(NONCE_LEN)
        return nonce + self._aead.encrypt(nonce, contact.encode(), case_no.encode())

    def decrypt(self, blob: bytes, case_no: str) -> str:
        return self._aead.decrypt(blob[:NONCE_LEN], blob[NONCE_LEN:], case_no.encode()).decode()

    def __repr__(self) -> str:
        return "<ContactCipher>"
