"""国密 for provincial profiles: SM2 keys, SM3, SM2 signatures and encryption, SM4.

The one module that imports the national-algorithm library.  SM2 arithmetic
is ``gmalg`` (pure Python; chosen after measuring the candidates, see
docs/benchmarks.md); SM3 inside it, and SM4, come from OpenSSL through
``cryptography``, which the project already depends on.  Every
interoperability trap a province or city may set is a field of
:class:`GmOptions`: the SM2 user id, DER or raw ``r||s`` signatures,
ciphertext order C1C3C2 or C1C2C3, the ``04`` point prefix, DER or raw
ciphertexts, hex or base64 text.

Keys come from files (``load_private_key`` / ``load_public_key``) in hex or
PEM.  A private key file must be mode 0600 (no group or other bits) or it is
refused.

Never: log, print, ``repr`` or put in an exception message a private key or
any part of it; sign with a nonce that is not from ``secrets`` (the tests fix
it only through the private ``_core`` helper, to check the published
examples); encrypt or decrypt without the SM3 integrity check C3.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from gmalg import errors as gmalg_errors
from gmalg.base import Hash as _GmalgHash
from gmalg.ellipticcurve import ECDLP
from gmalg.sm2 import SM2Core

DEFAULT_USER_ID = b"1234567812345678"  # GM/T 0009's default signer id
MAX_USER_ID_BYTES = 8191  # ENTL is the id's length in bits, in 16 bits
MAX_PLAINTEXT_BYTES = 16 * 1024 * 1024  # far above a batch of 5000 records; refused before any work
MAX_KEY_FILE_BYTES = 64 * 1024  # a key file larger than this is not a key
SM4_KEY_BYTES = 16
SM4_BLOCK_BYTES = 16

SigFormat = Literal["der", "raw"]
CipherOrder = Literal["C1C3C2", "C1C2C3"]
CipherFormat = Literal["raw", "der"]
TextEncoding = Literal["hex", "base64"]
Sm4Mode = Literal["ecb", "cbc"]


@dataclass(frozen=True)
class Curve:
    """Short Weierstrass curve parameters y^2 = x^3 + ax + b over F_p, base point G of order n."""

    p: int
    a: int
    b: int
    gx: int
    gy: int
    n: int


# GB/T 32918.5-2017 (GM/T 0003.5) recommended curve: the only one SM2 keys use.
SM2_CURVE = Curve(
    p=0xFFFFFFFE_FFFFFFFF_FFFFFFFF_FFFFFFFF_FFFFFFFF_00000000_FFFFFFFF_FFFFFFFF,
    a=0xFFFFFFFE_FFFFFFFF_FFFFFFFF_FFFFFFFF_FFFFFFFF_00000000_FFFFFFFF_FFFFFFFC,
    b=0x28E9FA9E_9D9F5E34_4D5A9E4B_CF6509A7_F39789F5_15AB8F92_DDBCBD41_4D940E93,
    gx=0x32C4AE2C_1F198119_5F990446_6A39C994_8FE30BBF_F2660BE1_715A4589_334C74C7,
    gy=0xBC3736A2_F4F6779C_59BDCEE3_6B692153_D0A9877C_C62A4740_02DF32E5_2139F0A0,
    n=0xFFFFFFFE_FFFFFFFF_FFFFFFFF_FFFFFFFF_7203DF6B_21C6052B_53BBF409_39D54123,
)

# Object identifiers in SM2 key files.
_OID_EC_PUBLIC_KEY = bytes.fromhex("2a8648ce3d0201")  # 1.2.840.10045.2.1
_OID_SM2 = bytes.fromhex("2a811ccf5501822d")  # 1.2.156.10197.1.301


class GmError(Exception):
    """Anything this module refuses; the message never contains key material."""


class GmOptionsError(GmError, ValueError):
    """A GmOptions field (or a configuration mapping) with a value it cannot take."""


class GmKeyError(GmError):
    """A key file or key text that cannot be used: missing, wrong mode, wrong form, not SM2."""


class GmSignatureError(GmError):
    """A signature that cannot even be parsed in the configured form (a wrong one verifies False)."""


class GmDecryptError(GmError):
    """A ciphertext that is malformed or fails its SM3 integrity check (C3)."""


@dataclass(frozen=True)
class GmOptions:
    """How this province or city writes its SM2 signatures and ciphertexts.

    The defaults are the standards' forms: GM/T 0009 DER signatures, GB/T
    32918.4 ciphertext order C1C3C2 with the ``04`` point prefix, lower-case
    hex.  The province's integration sheet decides; docs/profiles/shandong.md
    lists what is known.
    """

    user_id: bytes = DEFAULT_USER_ID  # the SM2 signer id (ZA); both sides must agree
    signature: SigFormat = "der"  # "der": SEQUENCE{r, s} (GM/T 0009); "raw": r||s, 64 bytes
    cipher_order: CipherOrder = "C1C3C2"  # GB/T 32918.4-2016; C1C2C3 is the 2010 draft's order
    cipher_format: CipherFormat = "raw"  # "raw": concatenated parts; "der": GM/T 0009 SEQUENCE
    point_prefix: bool = True  # raw only: C1 starts with 04 (uncompressed point)
    encoding: TextEncoding = "hex"  # text form of signatures and ciphertexts
    hex_upper: bool = False  # hex output in upper case (input is accepted in either case)

    def __post_init__(self) -> None:
        if not isinstance(self.user_id, bytes):
            raise GmOptionsError("user_id must be bytes (use GmOptions.from_mapping for text)")
        if len(self.user_id) > MAX_USER_ID_BYTES:
            raise GmOptionsError(f"user_id is longer than {MAX_USER_ID_BYTES} bytes")
        for name, allowed in (
            ("signature", ("der", "raw")),
            ("cipher_order", ("C1C3C2", "C1C2C3")),
            ("cipher_format", ("raw", "der")),
            ("encoding", ("hex", "base64")),
        ):
            if getattr(self, name) not in allowed:
                raise GmOptionsError(
                    "{} must be one of {}, not {!r}".format(
                        name, ", ".join(allowed), getattr(self, name)
                    )
                )
        for name in ("point_prefix", "hex_upper"):
            if not isinstance(getattr(self, name), bool):
                raise GmOptionsError(f"{name} must be true or false")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> GmOptions:
        """Options from configuration (e.g. a TOML table): ``user_id`` as text, other names as the fields."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise GmOptionsError(
                "unknown 国密 option(s) {} (known: {})".format(
                    ", ".join(unknown), ", ".join(sorted(known))
                )
            )
        kw = dict(cfg)
        if isinstance(kw.get("user_id"), str):
            kw["user_id"] = kw["user_id"].encode("utf-8")
        return cls(**kw)

    def as_mapping(self) -> dict[str, Any]:
        """The inverse of from_mapping (user id as UTF-8 text where it is text)."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        try:
            out["user_id"] = self.user_id.decode("utf-8")
        except UnicodeDecodeError:
            out["user_id"] = self.user_id.hex()
        return out


DEFAULT_OPTIONS = GmOptions()


# --- SM3 (OpenSSL) and gmalg's SM2 core around it


def sm3(data: bytes) -> bytes:
    """SM3 digest (GB/T 32905), 32 bytes."""
    h = hashes.Hash(hashes.SM3())
    h.update(data)
    return h.finalize()


class _SM3(_GmalgHash):
    """gmalg's hash slot filled with OpenSSL's SM3: its KDF and C3 run 35x faster than pure Python."""

    def __init__(self) -> None:
        self._h = hashes.Hash(hashes.SM3())

    @classmethod
    def hash_length(cls) -> int:
        return 32

    @classmethod
    def max_msg_length(cls) -> int:
        return 2**61 - 1

    def reset(self) -> None:
        self._h = hashes.Hash(hashes.SM3())

    def update(self, data: bytes) -> None:
        self._h.update(data)

    def value(self) -> bytes:
        return self._h.copy().finalize()


def _core(curve: Curve = SM2_CURVE, rnd: Callable[[int], int] | None = None) -> SM2Core:
    """An SM2 core on ``curve``; ``rnd(bits)`` replaces ``secrets.randbits`` (tests only)."""
    ecdlp = ECDLP(curve.p, curve.a, curve.b, (curve.gx, curve.gy), curve.n)
    return SM2Core(ecdlp, _SM3(), rnd or secrets.randbits)


_CORE = _core()


# --- keys


class PublicKey:
    """An SM2 public key (a point on the SM2 curve, checked when made)."""

    __slots__ = ("x", "y")

    def __init__(self, x: int, y: int, *, _checked: bool = False) -> None:
        if not _checked and not _CORE.verify_pk((x, y)):
            raise GmKeyError("the public key is not a point of the SM2 curve's group")
        self.x, self.y = x, y

    @classmethod
    def from_bytes(cls, data: bytes) -> PublicKey:
        """``04||x||y`` (65 bytes), ``x||y`` (64) or compressed ``02|03||x`` (33)."""
        if len(data) == 65 and data[0] == 4:
            data = data[1:]
        if len(data) == 64:
            return cls(int.from_bytes(data[:32], "big"), int.from_bytes(data[32:], "big"))
        if len(data) == 33 and data[0] in (2, 3):
            x = int.from_bytes(data[1:], "big")
            p = SM2_CURVE.p
            y2 = (pow(x, 3, p) + SM2_CURVE.a * x + SM2_CURVE.b) % p
            y = pow(y2, (p + 1) // 4, p)  # p = 3 mod 4
            if y * y % p != y2:
                raise GmKeyError("the compressed public key has no point on the SM2 curve")
            if y & 1 != data[0] & 1:
                y = p - y
            return cls(x, y)
        raise GmKeyError(
            f"an SM2 public key is 64 bytes (x||y), 65 (04||x||y) or 33 (compressed), not {len(data)}"
        )

    def to_bytes(self, prefix: bool = True) -> bytes:
        raw = self.x.to_bytes(32, "big") + self.y.to_bytes(32, "big")
        return b"\x04" + raw if prefix else raw

    def hex(self, prefix: bool = True) -> str:
        return self.to_bytes(prefix).hex()

    def pem(self) -> bytes:
        """SubjectPublicKeyInfo PEM, as OpenSSL writes it."""
        alg = _der(0x30, _der(0x06, _OID_EC_PUBLIC_KEY) + _der(0x06, _OID_SM2))
        return _pem("PUBLIC KEY", _der(0x30, alg + _der(0x03, b"\x00" + self.to_bytes())))

    @property
    def fingerprint(self) -> str:
        """SM3 of ``04||x||y``, hex: safe to log, names the key."""
        return sm3(self.to_bytes()).hex()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and (self.x, self.y) == (other.x, other.y)

    def __hash__(self) -> int:
        return hash((self.x, self.y))

    def __repr__(self) -> str:
        return f"<SM2 public key {self.fingerprint[:16]}>"


class PrivateKey:
    """An SM2 private key.  Its scalar is never shown: repr and str name the public key only."""

    __slots__ = ("_d", "public_key")

    def __init__(self, d: int, public_key: PublicKey | None = None) -> None:
        if not 1 <= d <= SM2_CURVE.n - 2:
            raise GmKeyError("the private key is out of range for SM2 (1 .. n-2)")
        x, y = _CORE.generate_pk(d)
        derived = PublicKey(x, y, _checked=True)
        if public_key is not None and public_key != derived:
            raise GmKeyError("the public key stored with the private key does not belong to it")
        self._d = d
        self.public_key = derived

    def pem(self) -> bytes:
        """PKCS#8 PEM with the public key inside, as OpenSSL 3 writes it (keep it mode 0600)."""
        ec = _der(
            0x30,
            _der(0x02, b"\x01")
            + _der(0x04, self._d.to_bytes(32, "big"))
            + _der(0xA1, _der(0x03, b"\x00" + self.public_key.to_bytes())),
        )
        alg = _der(0x30, _der(0x06, _OID_EC_PUBLIC_KEY) + _der(0x06, _OID_SM2))
        return _pem("PRIVATE KEY", _der(0x30, _der(0x02, b"\x00") + alg + _der(0x04, ec)))

    def hex(self) -> str:
        """The 64 hex digits of the scalar: for writing a key file, never for a log."""
        return self._d.to_bytes(32, "big").hex()

    def __repr__(self) -> str:
        return f"<SM2 private key for {self.public_key.fingerprint[:16]}>"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("an SM2 private key is not pickled (it would leave the process)")


def generate_private_key() -> PrivateKey:
    d = secrets.randbelow(SM2_CURVE.n - 2) + 1
    return PrivateKey(d)


_HEX_RE = re.compile(rb"\s*([0-9A-Fa-f]+)\s*")
_PEM_RE = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\s*(.*?)\s*-----END \1-----", re.S)


def _pem_blocks(data: bytes) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for m in _PEM_RE.finditer(data):
        try:
            out[m.group(1).decode()] = base64.b64decode(b"".join(m.group(2).split()), validate=True)
        except binascii.Error as e:
            raise GmKeyError(f"the PEM block {m.group(1).decode()!r} is not base64") from e
    return out


def parse_private_key(data: bytes | str) -> PrivateKey:
    """A private key from text: 64 hex digits, or PEM (PKCS#8 ``PRIVATE KEY``, SEC1 ``EC``/``SM2 PRIVATE KEY``)."""
    if isinstance(data, str):
        data = data.encode("ascii", "replace")
    m = _HEX_RE.fullmatch(data)
    if m:
        if len(m.group(1)) != 64:
            raise GmKeyError(
                f"a hex SM2 private key is 64 hex digits, this one has {len(m.group(1))}"
            )
        return PrivateKey(int(m.group(1), 16))
    blocks = _pem_blocks(data)
    if "ENCRYPTED PRIVATE KEY" in blocks:
        raise GmKeyError(
            "the private key is password-protected; store it unencrypted with mode 0600 "
            "(openssl pkcs8 -in FILE -out NEW)"
        )
    try:
        if "PRIVATE KEY" in blocks:
            return _from_pkcs8(blocks["PRIVATE KEY"])
        for label in ("EC PRIVATE KEY", "SM2 PRIVATE KEY"):  # SEC1; OpenSSL 3 names it SM2
            if label in blocks:
                return _from_sec1(blocks[label], None)
    except _DerError as e:
        raise GmKeyError(f"the PEM private key is not valid DER ({e})") from None
    raise GmKeyError("not an SM2 private key: expected 64 hex digits or a PEM PRIVATE KEY block")


def parse_public_key(data: bytes | str) -> PublicKey:
    """A public key from text: hex (x||y, 04||x||y or compressed) or PEM ``PUBLIC KEY``."""
    if isinstance(data, str):
        data = data.encode("ascii", "replace")
    m = _HEX_RE.fullmatch(data)
    if m:
        if len(m.group(1)) % 2:
            raise GmKeyError("the hex public key has an odd number of digits")
        return PublicKey.from_bytes(bytes.fromhex(m.group(1).decode()))
    blocks = _pem_blocks(data)
    if "PUBLIC KEY" not in blocks:
        raise GmKeyError("not an SM2 public key: expected hex or a PEM PUBLIC KEY block")
    try:
        spki = _der_seq(blocks["PUBLIC KEY"], 0x30, 2)
        _check_alg(spki[0])
        bits = _der_expect(spki[1], 0x03)
    except _DerError as e:
        raise GmKeyError(f"the PEM public key is not valid DER ({e})") from None
    if not bits or bits[0] != 0:
        raise GmKeyError("the public key's BIT STRING has unused bits")
    return PublicKey.from_bytes(bits[1:])


def _check_alg(alg_der: bytes) -> None:
    alg = _der_seq(alg_der, 0x30)
    oid = _der_expect(alg[0], 0x06)
    params = _der_expect(alg[1], 0x06) if len(alg) > 1 else None
    if oid == _OID_SM2 and params in (None, _OID_SM2):
        return  # some tools name the algorithm sm2 itself
    if oid != _OID_EC_PUBLIC_KEY:
        raise GmKeyError("the key is not an elliptic-curve key")
    if params != _OID_SM2:
        raise GmKeyError("the key is on another curve, not SM2 (1.2.156.10197.1.301)")


def _from_pkcs8(der: bytes) -> PrivateKey:
    info = _der_seq(der, 0x30)
    if len(info) < 3 or _der_expect(info[0], 0x02) != b"\x00":
        raise GmKeyError("unsupported PKCS#8 version")
    _check_alg(info[1])
    return _from_sec1(_der_expect(info[2], 0x04), _OID_SM2)


def _from_sec1(der: bytes, curve_oid: bytes | None) -> PrivateKey:
    ec = _der_seq(der, 0x30)
    if len(ec) < 2 or _der_expect(ec[0], 0x02) != b"\x01":
        raise GmKeyError("unsupported EC private key version")
    d = _der_expect(ec[1], 0x04)
    if len(d) > 32:
        raise GmKeyError("the private key is longer than 32 bytes")
    pub: PublicKey | None = None
    for el in ec[2:]:
        if el[0] == 0xA0:  # [0] parameters
            curve_oid = _der_expect(_der_expect(el, 0xA0), 0x06)
        elif el[0] == 0xA1:  # [1] public key
            bits = _der_expect(_der_expect(el, 0xA1), 0x03)
            if bits[:1] != b"\x00":
                raise GmKeyError("the public key's BIT STRING has unused bits")
            pub = PublicKey.from_bytes(bits[1:])
    if curve_oid is not None and curve_oid != _OID_SM2:
        raise GmKeyError("the key is on another curve, not SM2 (1.2.156.10197.1.301)")
    return PrivateKey(int.from_bytes(d, "big"), pub)


def _read_key_file(path: Path, private: bool) -> bytes:
    what = "SM2 private key" if private else "SM2 public key"
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise GmKeyError(f"no {what} file at {path}") from None
    except OSError as e:
        raise GmKeyError(f"cannot open the {what} file {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise GmKeyError(f"{path} is not a regular file")
        if private and st.st_mode & 0o077:
            raise GmKeyError(
                f"{path} has mode {st.st_mode & 0o777:04o}: group or others may read the "
                f"{what}; it must be 0600 (chmod 600 {path})"
            )
        if st.st_size > MAX_KEY_FILE_BYTES:
            raise GmKeyError(f"{path} is larger than {MAX_KEY_FILE_BYTES} bytes: not a key file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(MAX_KEY_FILE_BYTES + 1)
    finally:
        os.close(fd)


def load_private_key(path: str | Path) -> PrivateKey:
    """The hall's SM2 private key from ``path`` (hex or PEM, mode 0600, unencrypted)."""
    p = Path(path)
    data = _read_key_file(p, private=True)
    try:
        return parse_private_key(data)
    except GmKeyError as e:
        raise GmKeyError(f"{p}: {e}") from None


def load_public_key(path: str | Path) -> PublicKey:
    """An SM2 public key (the province's) from ``path`` (hex or PEM)."""
    p = Path(path)
    data = _read_key_file(p, private=False)
    try:
        return parse_public_key(data)
    except GmKeyError as e:
        raise GmKeyError(f"{p}: {e}") from None


def write_private_key(
    path: str | Path, key: PrivateKey, form: Literal["pem", "hex"] = "pem"
) -> None:
    """Create ``path`` holding ``key`` (PKCS#8 PEM or hex), mode 0600; refuses to overwrite."""
    p = Path(path)
    text = key.pem() if form == "pem" else (key.hex() + "\n").encode()
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    except FileExistsError:
        raise GmKeyError(f"{p} exists; not overwriting a key") from None
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        view = memoryview(text)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


# --- SM2 signatures


def _message(message: bytes | str) -> bytes:
    return message.encode("utf-8") if isinstance(message, str) else message


def _sign_rs(
    core: SM2Core, d: int, pub: tuple[int, int], message: bytes, user_id: bytes
) -> tuple[int, int]:
    return core.sign(message, d, user_id, pub)  # type: ignore[no-any-return]


def sign(key: PrivateKey, message: bytes | str, options: GmOptions = DEFAULT_OPTIONS) -> str:
    """SM2 signature (SM3 over ZA||M, ZA from the user id) of ``message`` (str is UTF-8), as text."""
    pk = key.public_key
    r, s = _sign_rs(_CORE, key._d, (pk.x, pk.y), _message(message), options.user_id)
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return _encode(_der_sig(r, s) if options.signature == "der" else raw, options)


def verify(
    public_key: PublicKey,
    message: bytes | str,
    signature: str | bytes,
    options: GmOptions = DEFAULT_OPTIONS,
) -> bool:
    """True if ``signature`` (text per options, or the binary form) signs ``message``.

    A signature that does not parse in the configured form raises
    GmSignatureError; one that parses but does not match returns False.
    """
    blob = _decode(signature, options, GmSignatureError, "signature")
    if options.signature == "raw":
        if len(blob) != 64:
            raise GmSignatureError(f"a raw SM2 signature is 64 bytes (r||s), not {len(blob)}")
        r, s = int.from_bytes(blob[:32], "big"), int.from_bytes(blob[32:], "big")
    else:
        try:
            parts = _der_seq(blob, 0x30, 2)
            r, s = _der_uint(parts[0]), _der_uint(parts[1])
        except _DerError as e:
            raise GmSignatureError(f"not a DER SM2 signature ({e})") from None
    pk = public_key
    return bool(_CORE.verify(_message(message), r, s, options.user_id, (pk.x, pk.y)))


# --- SM2 encryption


def _encrypt_parts(
    core: SM2Core, pub: tuple[int, int], plaintext: bytes
) -> tuple[int, int, bytes, bytes]:
    if not plaintext:
        raise GmError("SM2 cannot encrypt an empty message")  # gmalg would loop on it
    if len(plaintext) > MAX_PLAINTEXT_BYTES:
        raise GmError(f"plaintext longer than {MAX_PLAINTEXT_BYTES} bytes")
    (x1, y1), c2, c3 = core.encrypt(plaintext, pub)
    return x1, y1, c2, c3


def encrypt(
    public_key: PublicKey, plaintext: bytes | str, options: GmOptions = DEFAULT_OPTIONS
) -> str:
    """SM2-encrypt ``plaintext`` (str is UTF-8) to ``public_key``; the ciphertext as text per options."""
    x1, y1, c2, c3 = _encrypt_parts(_CORE, (public_key.x, public_key.y), _message(plaintext))
    return _encode(_pack_cipher(x1, y1, c2, c3, options), options)


def decrypt(
    key: PrivateKey, ciphertext: str | bytes, options: GmOptions = DEFAULT_OPTIONS
) -> bytes:
    """The plaintext of ``ciphertext`` (text per options, or the binary form); GmDecryptError if not."""
    blob = _decode(ciphertext, options, GmDecryptError, "ciphertext")
    x1, y1, c2, c3 = _unpack_cipher(blob, options)
    if len(c2) > MAX_PLAINTEXT_BYTES:
        raise GmDecryptError(f"ciphertext longer than {MAX_PLAINTEXT_BYTES} bytes of message")
    try:
        return bytes(_CORE.decrypt((x1, y1), c2, c3, key._d))
    except gmalg_errors.CheckFailedError:
        raise GmDecryptError(
            "the ciphertext fails its SM3 check (C3): wrong key, options or data"
        ) from None
    except gmalg_errors.UnknownError as e:
        if "key stream" in str(e):
            # GB/T 32918.4 A5/B4: a key stream of zeros means the sender had to
            # pick another k; some encoders (sm-crypto) do not (1 in 256 for a
            # 1-byte message), and the standard makes the receiver refuse it
            raise GmDecryptError(
                "the ciphertext's key stream is all zeros (GB/T 32918.4 A5: the sender must pick"
                " another k and encrypt again)"
            ) from None
        raise GmDecryptError(f"the ciphertext cannot be decrypted ({type(e).__name__})") from None
    except gmalg_errors.GMError as e:
        raise GmDecryptError(f"the ciphertext cannot be decrypted ({type(e).__name__})") from None


def _pack_cipher(x1: int, y1: int, c2: bytes, c3: bytes, o: GmOptions) -> bytes:
    if o.cipher_format == "der":
        tail = (_der(0x04, c3), _der(0x04, c2))
        if o.cipher_order == "C1C2C3":
            tail = tail[::-1]
        return _der(0x30, _der_int(x1) + _der_int(y1) + tail[0] + tail[1])
    c1 = (b"\x04" if o.point_prefix else b"") + x1.to_bytes(32, "big") + y1.to_bytes(32, "big")
    return c1 + (c3 + c2 if o.cipher_order == "C1C3C2" else c2 + c3)


def _unpack_cipher(blob: bytes, o: GmOptions) -> tuple[int, int, bytes, bytes]:
    if o.cipher_format == "der":
        try:
            parts = _der_seq(blob, 0x30, 4)
            x1, y1 = _der_uint(parts[0]), _der_uint(parts[1])
            a, b = _der_expect(parts[2], 0x04), _der_expect(parts[3], 0x04)
        except _DerError as e:
            raise GmDecryptError(f"not a DER SM2 ciphertext ({e})") from None
        c3, c2 = (a, b) if o.cipher_order == "C1C3C2" else (b, a)
        if len(c3) != 32:
            raise GmDecryptError(
                f"the ciphertext's hash (C3) is {len(c3)} bytes, not 32: is the order {o.cipher_order}?"
            )
        return x1, y1, c2, c3
    head = 65 if o.point_prefix else 64
    if len(blob) < head + 32 + 1:
        raise GmDecryptError(
            f"the ciphertext is {len(blob)} bytes, shorter than C1, C3 and one byte"
        )
    if o.point_prefix and blob[0] != 4:
        raise GmDecryptError(
            f"the ciphertext does not start with 04 (it starts {blob[0]:02x}): is point_prefix wrong?"
        )
    x1 = int.from_bytes(blob[head - 64 : head - 32], "big")
    y1 = int.from_bytes(blob[head - 32 : head], "big")
    rest = blob[head:]
    if o.cipher_order == "C1C3C2":
        return x1, y1, rest[32:], rest[:32]
    return x1, y1, rest[:-32], rest[-32:]


# --- SM4 (OpenSSL)


def _sm4_cipher(key: bytes, mode: Sm4Mode, iv: bytes | None) -> Cipher[Any]:
    if len(key) != SM4_KEY_BYTES:
        raise GmError(f"an SM4 key is {SM4_KEY_BYTES} bytes, not {len(key)}")
    if mode == "ecb":
        if iv is not None:
            raise GmError("SM4-ECB takes no IV")
        return Cipher(algorithms.SM4(key), modes.ECB())
    if mode == "cbc":
        if iv is None or len(iv) != SM4_BLOCK_BYTES:
            raise GmError(f"SM4-CBC needs a {SM4_BLOCK_BYTES}-byte IV")
        return Cipher(algorithms.SM4(key), modes.CBC(iv))
    raise GmError(f"SM4 mode must be ecb or cbc, not {mode!r}")


def sm4_encrypt(
    key: bytes, data: bytes, *, mode: Sm4Mode = "cbc", iv: bytes | None = None, pad: bool = True
) -> bytes:
    """SM4 (GB/T 32907) in ECB or CBC, PKCS#7 padding unless ``pad`` is False (then whole blocks)."""
    if pad:
        p = padding.PKCS7(128).padder()
        data = p.update(data) + p.finalize()
    elif len(data) % SM4_BLOCK_BYTES:
        raise GmError("without padding SM4 takes whole 16-byte blocks")
    e = _sm4_cipher(key, mode, iv).encryptor()
    return e.update(data) + e.finalize()


def sm4_decrypt(
    key: bytes, data: bytes, *, mode: Sm4Mode = "cbc", iv: bytes | None = None, pad: bool = True
) -> bytes:
    if not data or len(data) % SM4_BLOCK_BYTES:
        raise GmDecryptError("SM4 ciphertext is not a whole number of 16-byte blocks")
    d = _sm4_cipher(key, mode, iv).decryptor()
    out = d.update(data) + d.finalize()
    if not pad:
        return out
    u = padding.PKCS7(128).unpadder()
    try:
        return u.update(out) + u.finalize()
    except ValueError:
        raise GmDecryptError("SM4 padding is not PKCS#7: wrong key, IV or mode") from None


# --- text encodings


def _encode(blob: bytes, o: GmOptions) -> str:
    if o.encoding == "base64":
        return base64.b64encode(blob).decode("ascii")
    h = blob.hex()
    return h.upper() if o.hex_upper else h


def _decode(text: str | bytes, o: GmOptions, err: type[GmError], what: str) -> bytes:
    if isinstance(text, bytes):
        return text
    try:
        if o.encoding == "base64":
            return base64.b64decode(text, validate=True)
        if _HEX_TEXT.fullmatch(text):
            return bytes.fromhex(text)
    except (ValueError, binascii.Error):
        pass
    raise err(f"the {what} is not {o.encoding} text")


_HEX_TEXT = re.compile(r"(?:[0-9A-Fa-f]{2})+")


# --- just enough DER (definite lengths, minimal integers, nothing left over)


class _DerError(ValueError):
    pass


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def _der(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(value)) + value


def _der_int(v: int) -> bytes:
    b = v.to_bytes(max(1, (v.bit_length() + 8) // 8), "big")  # room for a 0 sign byte
    return _der(0x02, b)


def _der_sig(r: int, s: int) -> bytes:
    return _der(0x30, _der_int(r) + _der_int(s))


def _der_next(buf: bytes, i: int) -> tuple[int, int, int]:
    """(tag, value start, value end) of the element at ``i``."""
    if i + 2 > len(buf):
        raise _DerError("truncated")
    tag, n = buf[i], buf[i + 1]
    i += 2
    if n & 0x80:
        k = n & 0x7F
        if k == 0 or k > 4 or i + k > len(buf):
            raise _DerError("bad length")
        n = int.from_bytes(buf[i : i + k], "big")
        if n < 0x80 or buf[i] == 0:
            raise _DerError("length not minimal")
        i += k
    if i + n > len(buf):
        raise _DerError("truncated")
    return tag, i, i + n


def _der_expect(el: bytes, tag: int) -> bytes:
    t, s, e = _der_next(el, 0)
    if t != tag:
        raise _DerError(f"expected tag {tag:#04x}, found {t:#04x}")
    if e != len(el):
        raise _DerError("bytes after the element")
    return el[s:e]


def _der_seq(buf: bytes, tag: int, count: int | None = None) -> list[bytes]:
    """The elements (whole TLVs) of the constructed element that is all of ``buf``."""
    body = _der_expect(buf, tag)
    out, i = [], 0
    while i < len(body):
        _, _, e = _der_next(body, i)
        out.append(body[i:e])
        i = e
    if count is not None and len(out) != count:
        raise _DerError(f"{len(out)} elements, expected {count}")
    return out


def _der_uint(el: bytes) -> int:
    v = _der_expect(el, 0x02)
    if not v or v[0] & 0x80:
        raise _DerError("negative or empty INTEGER")
    if len(v) > 1 and v[0] == 0 and not v[1] & 0x80:
        raise _DerError("INTEGER not minimal")
    if len(v) > 33:
        raise _DerError("INTEGER longer than 256 bits")
    return int.from_bytes(v, "big")


def _pem(label: str, der: bytes) -> bytes:
    b64 = base64.b64encode(der).decode()
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return (
        "-----BEGIN {0}-----\n{1}\n-----END {0}-----\n".format(label, "\n".join(lines))
    ).encode()


__all__ = [
    "DEFAULT_OPTIONS",
    "DEFAULT_USER_ID",
    "MAX_PLAINTEXT_BYTES",
    "SM2_CURVE",
    "Curve",
    "GmDecryptError",
    "GmError",
    "GmKeyError",
    "GmOptions",
    "GmOptionsError",
    "GmSignatureError",
    "PrivateKey",
    "PublicKey",
    "decrypt",
    "encrypt",
    "generate_private_key",
    "load_private_key",
    "load_public_key",
    "parse_private_key",
    "parse_public_key",
    "sign",
    "sm3",
    "sm4_decrypt",
    "sm4_encrypt",
    "verify",
    "write_private_key",
]
