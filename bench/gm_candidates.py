"""Try every SM2/SM3 library candidate on this machine: correctness, then speed.

Not part of the daemon: a one-off instrument that chose the library behind
``daemon/uplink/gm.py`` (docs/benchmarks.md, "国密 SM2/SM3 libraries").  Run it
in a scratch virtual environment with the candidates installed::

    python3 -m venv /tmp/gmtry
    /tmp/gmtry/bin/pip install gmssl gmalg snowland-smx smcryptopy gmssl-pyx \
        gmssl-fast tongsuopy cryptography
    /tmp/gmtry/bin/python bench/gm_candidates.py --seconds 2
    .venv/bin/python bench/gm_candidates.py --seconds 2 --only haochaping

(gmssl-python, pygmssl and easy-gmssl, ctypes bindings of GmSSL's shared
library, are not driven here: the first two find no libgmssl on Debian; see
docs/benchmarks.md.)

Each candidate runs against OpenSSL 3's command line (an unrelated
implementation, with the same key): OpenSSL verifies the candidate's
signature (user id 1234567812345678) and the candidate verifies OpenSSL's;
the candidate decrypts OpenSSL's ciphertext and OpenSSL decrypts the
candidate's; a ciphertext with one flipped bit must be refused.  Then it
times sign, verify, encrypt and decrypt of a 100-byte message and
encrypt/decrypt of a 100 KiB one (a batch of about 200 records, the size the
Shandong envelope encrypts in one piece).  Only the standard library and the
candidates are imported; ``openssl`` must be on PATH.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import secrets
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

UID = b"1234567812345678"
SMALL = 100
LARGE = 100 * 1024
SM3_ABC = "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"


# --- a few lines of DER, enough for OpenSSL's SM2 keys, signatures, ciphertexts


def _tlv(buf: bytes, i: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the element at ``i``."""
    tag, n = buf[i], buf[i + 1]
    i += 2
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(buf[i : i + k], "big")
        i += k
    return tag, i, i + n


def _children(buf: bytes, start: int, end: int) -> list[tuple[int, bytes]]:
    out = []
    while start < end:
        tag, s, e = _tlv(buf, start)
        out.append((tag, buf[s:e]))
        start = e
    return out


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def _der(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(value)) + value


def _der_int(v: bytes) -> bytes:
    v = v.lstrip(b"\0") or b"\0"
    if v[0] & 0x80:
        v = b"\0" + v
    return _der(0x02, v)


def sig_raw_to_der(raw: bytes) -> bytes:
    return _der(0x30, _der_int(raw[:32]) + _der_int(raw[32:]))


def sig_der_to_raw(der: bytes) -> bytes:
    _, s, e = _tlv(der, 0)
    (_, r), (_, s_) = _children(der, s, e)
    return int.from_bytes(r, "big").to_bytes(32, "big") + int.from_bytes(s_, "big").to_bytes(
        32, "big"
    )


def ct_der_to_raw(der: bytes) -> bytes:
    """OpenSSL's SM2Cipher SEQUENCE {x, y, C3, C2} -> x||y||C3||C2 (no 04)."""
    _, s, e = _tlv(der, 0)
    (_, x), (_, y), (_, c3), (_, c2) = _children(der, s, e)
    return (
        int.from_bytes(x, "big").to_bytes(32, "big")
        + int.from_bytes(y, "big").to_bytes(32, "big")
        + c3
        + c2
    )


def ct_raw_to_der(raw: bytes) -> bytes:
    x, y, c3, c2 = raw[:32], raw[32:64], raw[64:96], raw[96:]
    return _der(0x30, _der_int(x) + _der_int(y) + _der(0x04, c3) + _der(0x04, c2))


def key_from_pem(pem: bytes) -> tuple[bytes, bytes]:
    """(d, x||y) from OpenSSL's PKCS#8 SM2 private key."""
    import base64

    body = b"".join(line for line in pem.splitlines() if line and not line.startswith(b"-----"))
    der = base64.b64decode(body)
    _, s, e = _tlv(der, 0)
    parts = _children(der, s, e)
    inner = parts[2][1]  # OCTET STRING holding ECPrivateKey
    _, s, e = _tlv(inner, 0)
    ec = _children(inner, s, e)
    d = ec[1][1]
    pub = next(v for t, v in ec if t == 0xA1)
    _, s2, e2 = _tlv(pub, 0)
    bits = pub[s2:e2]
    return d, bits[2:]  # skip the unused-bits byte and 04


# --- OpenSSL's side


class OpenSSL:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.key = work / "k.pem"
        self.pub = work / "pub.pem"
        subprocess.run(
            ["openssl", "genpkey", "-algorithm", "SM2", "-out", str(self.key)], check=True
        )
        os.chmod(self.key, 0o600)
        subprocess.run(
            ["openssl", "pkey", "-in", str(self.key), "-pubout", "-out", str(self.pub)],
            check=True,
        )

    def _run(self, *args: str, data: bytes) -> subprocess.CompletedProcess[bytes]:
        src = self.work / "in.bin"
        src.write_bytes(data)
        return subprocess.run(
            ["openssl", "pkeyutl", *args, "-in", str(src)], capture_output=True, check=False
        )

    def sign(self, msg: bytes) -> bytes:
        p = self._run(
            "-sign", "-inkey", str(self.key), "-rawin", "-digest", "sm3",
            "-pkeyopt", "distid:" + UID.decode(), data=msg,
        )  # fmt: skip
        p.check_returncode()
        return p.stdout

    def verify(self, msg: bytes, der_sig: bytes) -> bool:
        sig = self.work / "sig.der"
        sig.write_bytes(der_sig)
        p = self._run(
            "-verify", "-pubin", "-inkey", str(self.pub), "-rawin", "-digest", "sm3",
            "-pkeyopt", "distid:" + UID.decode(), "-sigfile", str(sig), data=msg,
        )  # fmt: skip
        return p.returncode == 0

    def encrypt(self, msg: bytes) -> bytes:
        p = self._run("-encrypt", "-pubin", "-inkey", str(self.pub), data=msg)
        p.check_returncode()
        return p.stdout

    def decrypt(self, der_ct: bytes) -> bytes | None:
        p = self._run("-decrypt", "-inkey", str(self.key), data=der_ct)
        return p.stdout if p.returncode == 0 else None


# --- candidates: each returns an object with sign/verify/encrypt/decrypt on
# raw r||s signatures and raw x||y||C3||C2 ciphertexts (no 04), or raises.


class Candidate:
    name = ""
    kind = ""
    max_plain: int | None = None

    def sign(self, msg: bytes) -> bytes:
        raise NotImplementedError

    def verify(self, msg: bytes, sig: bytes) -> bool:
        raise NotImplementedError

    def encrypt(self, msg: bytes) -> bytes:
        raise NotImplementedError

    def decrypt(self, ct: bytes) -> bytes | None:
        raise NotImplementedError

    def sm3(self, msg: bytes) -> bytes:
        raise NotImplementedError


class Gmssl(Candidate):
    name, kind = "gmssl 3.2.2 (duanhongyi)", "pure Python"

    def __init__(self, d: bytes, pub: bytes) -> None:
        from gmssl import sm2, sm3

        self._sm3 = sm3
        self.c = sm2.CryptSM2(private_key=d.hex(), public_key=pub.hex(), mode=1)

    def sign(self, msg: bytes) -> bytes:
        return bytes.fromhex(self.c.sign_with_sm3(msg))

    def verify(self, msg: bytes, sig: bytes) -> bool:
        return bool(self.c.verify_with_sm3(sig.hex(), msg))

    def encrypt(self, msg: bytes) -> bytes:
        return bytes(self.c.encrypt(msg))

    def decrypt(self, ct: bytes) -> bytes | None:
        return bytes(self.c.decrypt(ct))

    def sm3(self, msg: bytes) -> bytes:
        return bytes.fromhex(self._sm3.sm3_hash(list(msg)))


class Gmalg(Candidate):
    name, kind = "gmalg 1.1.2", "pure Python"

    def __init__(self, d: bytes, pub: bytes) -> None:
        import gmalg

        self.g = gmalg
        self.c = gmalg.SM2(d, UID, b"\x04" + pub)

    def sign(self, msg: bytes) -> bytes:
        r, s = self.c.sign(msg)
        return r.rjust(32, b"\0") + s.rjust(32, b"\0")

    def verify(self, msg: bytes, sig: bytes) -> bool:
        return bool(self.c.verify(msg, sig[:32], sig[32:]))

    def encrypt(self, msg: bytes) -> bytes:
        return self.c.encrypt(msg)[1:]

    def decrypt(self, ct: bytes) -> bytes | None:
        try:
            return self.c.decrypt(b"\x04" + ct)
        except self.g.errors.GMError:
            return None

    def sm3(self, msg: bytes) -> bytes:
        h = self.g.SM3()
        h.update(msg)
        return h.value()


class GmalgNativeSM3(Gmalg):
    """gmalg's SM2 with its Hash slot filled by OpenSSL's SM3 (hashlib/cryptography)."""

    name, kind = "gmalg 1.1.2 + OpenSSL SM3", "pure Python EC, native SM3"

    def __init__(self, d: bytes, pub: bytes) -> None:
        super().__init__(d, pub)
        from gmalg import sm2 as gsm2
        from gmalg.base import Hash

        new = _native_sm3()

        class NativeSM3(Hash):
            def __init__(self) -> None:
                self.h = new()

            @classmethod
            def hash_length(cls) -> int:
                return 32

            @classmethod
            def max_msg_length(cls) -> int:
                return 2**61 - 1

            def reset(self) -> None:
                self.h = new()

            def update(self, data: bytes) -> None:
                self.h.update(data)

            def value(self) -> bytes:
                return (
                    bytes(self.h.copy().finalize())
                    if hasattr(self.h, "finalize")
                    else self.h.digest()
                )

        self.c._core = gsm2.SM2Core(gsm2._ecdlp, NativeSM3())  # type: ignore[attr-defined]


def _native_sm3() -> Callable[[], Any]:
    try:
        hashlib.new("sm3")
        return lambda: hashlib.new("sm3")
    except ValueError:
        from cryptography.hazmat.primitives import hashes

        return lambda: hashes.Hash(hashes.SM3())


class Pysmx(Candidate):
    name, kind = "snowland-smx 1.1.0 (pysmx)", "pure Python"

    def __init__(self, d: bytes, pub: bytes) -> None:
        import pysmx.SM2 as P
        import pysmx.SM3 as S3

        self.P, self.S3, self.d, self.pub = P, S3, d.hex(), pub.hex()

    def sign(self, msg: bytes) -> bytes:
        return bytes(self.P.Sign(msg, self.d, secrets.token_hex(32), 64, uid=UID))

    def verify(self, msg: bytes, sig: bytes) -> bool:
        return bool(self.P.Verify(sig, msg, self.pub, 64, uid=UID))

    def encrypt(self, msg: bytes) -> bytes:
        return bytes(self.P.Encrypt(msg, self.pub, 64, mode="C1C3C2"))

    def decrypt(self, ct: bytes) -> bytes | None:
        return self.P.Decrypt(ct, self.d, 64, mode="C1C3C2")

    def sm3(self, msg: bytes) -> bytes:
        return (
            bytes.fromhex(self.S3.hash_msg(msg))
            if hasattr(self.S3, "hash_msg")
            else self.S3.digest(msg)
        )


class Smcryptopy(Candidate):
    name, kind = "smcryptopy 0.2.1", "Rust (smcrypto) via cffi"

    def __init__(self, d: bytes, pub: bytes) -> None:
        import smcryptopy.sm2 as s
        import smcryptopy.sm3 as s3

        self.s, self.s3, self.d, self.pub = s, s3, d.hex(), pub.hex()

    def sign(self, msg: bytes) -> bytes:
        return sig_der_to_raw(self.s.sign(UID, msg, self.d))

    def verify(self, msg: bytes, sig: bytes) -> bool:
        return bool(self.s.verify(UID, msg, sig_raw_to_der(sig), self.pub))

    def encrypt(self, msg: bytes) -> bytes:
        return self.s.encrypt(msg, self.pub)

    def decrypt(self, ct: bytes) -> bytes | None:
        return self.s.decrypt(ct, self.d)

    def sm3(self, msg: bytes) -> bytes:
        return bytes.fromhex(self.s3.sm3_hash(msg))


class GmsslPyx(Candidate):
    name, kind = "gmssl-pyx 2.1.0", "GmSSL 3 (C) extension"
    max_plain = 255

    def __init__(self, d: bytes, pub: bytes) -> None:
        import gmssl_pyx as g

        self.g, self.d, self.pub = g, d, pub

    def sign(self, msg: bytes) -> bytes:
        return sig_der_to_raw(self.g.sm2_sign(self.d, self.pub, msg, UID))

    def verify(self, msg: bytes, sig: bytes) -> bool:
        return bool(self.g.sm2_verify(self.pub, msg, sig_raw_to_der(sig), UID))

    def encrypt(self, msg: bytes) -> bytes:
        return ct_der_to_raw(self.g.sm2_encrypt(self.pub, msg))

    def decrypt(self, ct: bytes) -> bytes | None:
        try:
            return self.g.sm2_decrypt(self.d, ct_raw_to_der(ct))
        except self.g.GmsslInnerError:
            return None

    def sm3(self, msg: bytes) -> bytes:
        return self.g.sm3_hash(msg)


class GmsslFast(Candidate):
    name, kind = "gmssl-fast 0.1.0", "GmSSL 3 (C), static, abi3"
    max_plain = 255

    def __init__(self, d: bytes, pub: bytes) -> None:
        import gmssl_fast as g

        self.g = g
        self.c = g.SM2(private_key=d.hex(), public_key="04" + pub.hex())

    def sign(self, msg: bytes) -> bytes:
        return self.c.sign(msg)

    def verify(self, msg: bytes, sig: bytes) -> bool:
        try:
            return bool(self.c.verify(msg, sig))
        except self.g.GmsslError:
            return False

    def encrypt(self, msg: bytes) -> bytes:
        return self.c.encrypt(msg)

    def decrypt(self, ct: bytes) -> bytes | None:
        try:
            return self.c.decrypt(ct)
        except self.g.GmsslError:
            return None

    def sm3(self, msg: bytes) -> bytes:
        return self.g.sm3(msg)


class Tongsuopy(Candidate):
    name, kind = "tongsuopy 1.0.1", "Tongsuo (C), cryptography-style API"

    def __init__(self, d: bytes, pub: bytes, pem: bytes = b"") -> None:
        from tongsuopy.crypto import hashes
        from tongsuopy.crypto.asymciphers import ec
        from tongsuopy.crypto.serialization import load_pem_private_key

        self.hashes, self.ec = hashes, ec
        self.k = load_pem_private_key(pem, None)

    def sign(self, msg: bytes) -> bytes:
        return sig_der_to_raw(self.k.sign(msg, self.ec.ECDSA(self.hashes.SM3())))

    def verify(self, msg: bytes, sig: bytes) -> bool:
        try:
            self.k.public_key().verify(sig_raw_to_der(sig), msg, self.ec.ECDSA(self.hashes.SM3()))
            return True
        except Exception:
            return False

    def encrypt(self, msg: bytes) -> bytes:
        raise NotImplementedError("no SM2 encryption in its API")

    def sm3(self, msg: bytes) -> bytes:
        h = self.hashes.Hash(self.hashes.SM3())
        h.update(msg)
        return h.finalize()


class Ours(Candidate):
    """daemon/uplink/gm.py itself (run this in the project's .venv: --only haochaping)."""

    name, kind = "haochaping gm.py (gmalg + OpenSSL SM3)", "the chosen wrapper"

    def __init__(self, d: bytes, pub: bytes) -> None:
        from haochaping.daemon.uplink import gm

        self.gm = gm
        self.key = gm.parse_private_key(d.hex())
        self.o = gm.GmOptions(signature="raw", point_prefix=False)

    def sign(self, msg: bytes) -> bytes:
        return bytes.fromhex(self.gm.sign(self.key, msg, self.o))

    def verify(self, msg: bytes, sig: bytes) -> bool:
        return self.gm.verify(self.key.public_key, msg, sig, self.o)

    def encrypt(self, msg: bytes) -> bytes:
        return bytes.fromhex(self.gm.encrypt(self.key.public_key, msg, self.o))

    def decrypt(self, ct: bytes) -> bytes | None:
        try:
            return self.gm.decrypt(self.key, ct, self.o)
        except self.gm.GmDecryptError:
            return None

    def sm3(self, msg: bytes) -> bytes:
        return self.gm.sm3(msg)


CANDIDATES: list[type[Candidate]] = [
    Gmssl, Gmalg, GmalgNativeSM3, Pysmx, Smcryptopy, GmsslPyx, GmsslFast, Tongsuopy, Ours,
]  # fmt: skip


def rate(fn: Callable[[], object], seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    deadline = t0 + seconds
    while True:
        fn()
        n += 1
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - t0)


def check(c: Candidate, ossl: OpenSSL) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        out["sm3_abc"] = c.sm3(b"abc").hex() == SM3_ABC
    except Exception as e:  # noqa: BLE001 - a candidate may lack it; report, go on
        out["sm3_abc"] = f"{type(e).__name__}"
    msg = b"20251125135320" + b"3702000001" + b"appWord-secret"
    out["their_sig_verifies_at_openssl"] = ossl.verify(msg, sig_raw_to_der(c.sign(msg)))
    out["openssl_sig_verifies_here"] = c.verify(msg, sig_der_to_raw(ossl.sign(msg)))
    out["wrong_msg_refused"] = not c.verify(msg + b"x", c.sign(msg))
    try:
        pt = b"[" + b'{"satisfaction":"5"},' * 4 + b"{}]"
        out["decrypts_openssl"] = c.decrypt(ct_der_to_raw(ossl.encrypt(pt))) == pt
        ct = c.encrypt(pt)
        out["openssl_decrypts_theirs"] = ossl.decrypt(ct_raw_to_der(ct)) == pt
        bad = bytearray(ct)
        bad[70] ^= 1  # inside C3: the integrity hash must catch it
        try:
            got = c.decrypt(bytes(bad))
        except Exception:  # noqa: BLE001
            got = None
        out["tampered_refused"] = got is None
        if c.max_plain is None:
            big = secrets.token_bytes(LARGE)
            out["large_roundtrip"] = c.decrypt(c.encrypt(big)) == big
            out["openssl_decrypts_large"] = ossl.decrypt(ct_raw_to_der(c.encrypt(big))) == big
        else:
            out["large_roundtrip"] = f"refused: plaintext limit {c.max_plain} bytes"
    except NotImplementedError as e:
        out["encrypt"] = str(e)
    return out


def measure(c: Candidate, seconds: float) -> dict[str, Any]:
    msg = secrets.token_bytes(SMALL)
    sig = c.sign(msg)
    res: dict[str, Any] = {
        "sign_per_s": rate(lambda: c.sign(msg), seconds),
        "verify_per_s": rate(lambda: c.verify(msg, sig), seconds),
    }
    try:
        ct = c.encrypt(msg)
    except NotImplementedError:
        return res
    res["encrypt_per_s"] = rate(lambda: c.encrypt(msg), seconds)
    res["decrypt_per_s"] = rate(lambda: c.decrypt(ct), seconds)
    if c.max_plain is None:
        big = secrets.token_bytes(LARGE)
        bct = c.encrypt(big)
        res["encrypt_100k_ms"] = 1000 / rate(lambda: c.encrypt(big), seconds)
        res["decrypt_100k_ms"] = 1000 / rate(lambda: c.decrypt(bct), seconds)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    ap.add_argument("--only", help="run only candidates whose name contains this")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        ossl = OpenSSL(Path(tmp))
        pem = ossl.key.read_bytes()
        d, pub = key_from_pem(pem)
        for cls in CANDIDATES:
            if args.only and args.only not in cls.name:
                continue
            row: dict[str, Any] = {"name": cls.name, "kind": cls.kind}
            try:
                c = cls(d, pub, pem) if cls is Tongsuopy else cls(d, pub)  # type: ignore[call-arg]
            except ImportError as e:
                row["import"] = f"not installed ({e})"
                results.append(row)
                continue
            row["checks"] = check(c, ossl)
            row["speed"] = measure(c, args.seconds)
            results.append(row)
    try:
        rsa = subprocess.run(
            ["openssl", "speed", "-seconds", str(max(1, int(args.seconds))), "sm2"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        line = [x for x in rsa.stdout.splitlines() if "SM2" in x]
        results.append(
            {
                "name": "openssl speed sm2 (C, reference)",
                "speed": line[-1].split() if line else None,
            }
        )
    except OSError:
        pass
    doc = {
        "machine": f"{platform.machine()} {os.cpu_count()} cpu, {platform.platform()}, "
        f"CPython {platform.python_version()}",
        "results": results,
    }
    if args.json:
        print(json.dumps(doc, indent=1, ensure_ascii=False))
        return
    print(doc["machine"])
    for r in results:
        print(f"\n== {r['name']}  {r.get('kind', '')}")
        for k in ("import", "checks", "speed"):
            if k in r:
                v = r[k]
                if isinstance(v, dict):
                    v = ", ".join(
                        f"{a}={b:.1f}" if isinstance(b, float) else f"{a}={b}" for a, b in v.items()
                    )
                print(f"  {k}: {v}")


if __name__ == "__main__":
    main()
