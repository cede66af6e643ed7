"""daemon/uplink/gm.py on its own: published test vectors, options, keys, refusals.

The cross-implementation checks (OpenSSL's command line, the npm registry's
sm-crypto) are in test_gm_interop.py.
"""

from __future__ import annotations

import base64
import itertools
import os
import pickle
import secrets
from pathlib import Path

import pytest
from haochaping.daemon.uplink import gm

# --- GB/T 32905-2016 (SM3), Appendix A


def test_sm3_gbt32905_examples() -> None:
    assert gm.sm3(b"abc").hex() == (
        "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
    )
    assert gm.sm3(b"abcd" * 16).hex() == (
        "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732"
    )


# --- GB/T 32907-2016 (SM4), Appendix A

SM4_KEY = bytes.fromhex("0123456789abcdeffedcba9876543210")


def test_sm4_gbt32907_example_1() -> None:
    ct = gm.sm4_encrypt(SM4_KEY, SM4_KEY, mode="ecb", pad=False)
    assert ct.hex() == "681edf34d206965e86b3e94f536e4246"
    assert gm.sm4_decrypt(SM4_KEY, ct, mode="ecb", pad=False) == SM4_KEY


def test_sm4_gbt32907_example_2_million_rounds() -> None:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    # gm.sm4_encrypt per block would spend the time building ciphers; the
    # example is about the block function, which one encryptor applies.
    enc = Cipher(algorithms.SM4(SM4_KEY), modes.ECB()).encryptor()
    block = SM4_KEY
    for _ in range(1_000_000):
        block = enc.update(block)
    assert block.hex() == "595298c7c6fd271f0402f804c33d3f66"
    # and gm's own function agrees with that encryptor on the first round
    assert gm.sm4_encrypt(SM4_KEY, SM4_KEY, mode="ecb", pad=False) == (
        Cipher(algorithms.SM4(SM4_KEY), modes.ECB()).encryptor().update(SM4_KEY)
    )


def test_sm4_modes_padding_and_refusals() -> None:
    iv = bytes(range(16))
    for n in (0, 1, 15, 16, 17, 100):
        data = secrets.token_bytes(n)
        for mode, v in (("ecb", None), ("cbc", iv)):
            ct = gm.sm4_encrypt(SM4_KEY, data, mode=mode, iv=v)  # type: ignore[arg-type]
            assert len(ct) == (n // 16 + 1) * 16  # PKCS#7 always adds 1..16 bytes
            assert gm.sm4_decrypt(SM4_KEY, ct, mode=mode, iv=v) == data  # type: ignore[arg-type]
    ct = gm.sm4_encrypt(SM4_KEY, b"x" * 20, mode="cbc", iv=iv)
    with pytest.raises(gm.GmDecryptError, match="padding"):
        gm.sm4_decrypt(bytes(16), ct, mode="cbc", iv=iv)
    with pytest.raises(gm.GmDecryptError, match="16-byte blocks"):
        gm.sm4_decrypt(SM4_KEY, ct[:-1], mode="cbc", iv=iv)
    with pytest.raises(gm.GmError, match="16 bytes"):
        gm.sm4_encrypt(b"short", b"x")
    with pytest.raises(gm.GmError, match="IV"):
        gm.sm4_encrypt(SM4_KEY, b"x", mode="cbc")
    with pytest.raises(gm.GmError, match="no IV"):
        gm.sm4_encrypt(SM4_KEY, b"x", mode="ecb", iv=iv)
    with pytest.raises(gm.GmError, match="whole 16-byte blocks"):
        gm.sm4_encrypt(SM4_KEY, b"x", mode="ecb", pad=False)


# --- GB/T 32918.2 / .4-2016 Appendix A: SM2 on the standard's example curve,
# with the random k fixed as the standard prints it.  gmalg lets the curve and
# the random source be chosen (gm._core), so these run the same code path as
# the real curve.  (Vectors as carried by Botan's sm2_sig.vec / sm2_enc.vec.)

TEST_CURVE = gm.Curve(
    p=0x8542D69E4C044F18E8B92435BF6FF7DE457283915C45517D722EDB8B08F1DFC3,
    a=0x787968B4FA32C3FD2417842E73BBFEFF2F3C848B6831D7E0EC65228B3937E498,
    b=0x63E4C6D3B23B0C849CF84241484BFE48F61D59A5B16BA06E6E12D1DA27C5249A,
    gx=0x421DEBD61B62EAB6746434EBC3CC315E32220B3BADD50BDC4C4E6C147FEDD43D,
    gy=0x0680512BCBB42C07D47349D2153B70C4E5D7FDFCBFA36EA1A85841B9E46E09A2,
    n=0x8542D69E4C044F18E8B92435BF6FF7DD297720630485628D5AE74EE7C32E79B7,
)


def _fixed(k: int):  # type: ignore[no-untyped-def]
    return lambda bits: k


def test_sm2_signature_gbt32918_2_example() -> None:
    d = 0x128B2FA8BD433C6C068C8D803DFF79792A519A55171B1B650C23661D15897263
    k = 0x6CB28D99385C175C94F94E934817663FC176D925DD72B727260DBAAE1FB2F96F
    core = gm._core(TEST_CURVE, _fixed(k))
    pub = core.generate_pk(d)
    assert pub == (
        0x0AE4C7798AA0F119471BEE11825BE46202BB79E2A5844495E97C04FF4DF2548A,
        0x7C0240F88F1CD4E16352A73C17B7F16F07353E53A176D684A9FE0C6BB798E857,
    )
    uid, msg = b"ALICE123@YAHOO.COM", b"message digest"
    r, s = gm._sign_rs(core, d, pub, msg, uid)
    assert (r, s) == (
        0x40F1EC59F793D9F49E09DCEF49130D4194F79FB1EED2CAA55BACDB49C4E755D1,
        0x6FC6DAC32C5D5CF10C77DFB20F7C2EB667A457872FB09EC56327A67EC7DEEBE7,
    )
    assert core.verify(msg, r, s, uid, pub)
    assert not core.verify(msg, r, s, b"1234567812345678", pub)  # the user id is in ZA
    assert not core.verify(b"message digesT", r, s, uid, pub)


def test_sm2_encryption_gbt32918_4_example() -> None:
    d = 0x1649AB77A00637BD5E2EFE283FBF353534AA7F7CB89463F208DDBC2920BB0DA0
    k = 0x4C62EEFD6ECFC2B95B92FD6C3D9575148AFA17425546D49018E5388D49DD7B4F
    msg = b"encryption standard"
    core = gm._core(TEST_CURVE, _fixed(k))
    x1, y1, c2, c3 = gm._encrypt_parts(core, core.generate_pk(d), msg)
    der = gm._pack_cipher(x1, y1, c2, c3, gm.GmOptions(cipher_format="der"))
    assert der.hex().upper() == (
        "307B0220245C26FB68B1DDDDB12C4B6BF9F2B6D5FE60A383B0D18D1C4144ABF17F6252E7"
        "022076CB9264C2A7E88E52B19903FDC47378F605E36811F5C07423A24B84400F01B8"
        "04209C3D7360C30156FAB7C80A0276712DA9D8094A634B766D3A285E07480653426D"
        "0413650053A89B41C418B0C3AAD00D886C00286467"
    )
    # the raw forms are the same parts in the configured order and prefix
    raw = gm._pack_cipher(x1, y1, c2, c3, gm.GmOptions())
    assert raw == b"\x04" + x1.to_bytes(32, "big") + y1.to_bytes(32, "big") + c3 + c2
    old = gm._pack_cipher(x1, y1, c2, c3, gm.GmOptions(cipher_order="C1C2C3", point_prefix=False))
    assert old == x1.to_bytes(32, "big") + y1.to_bytes(32, "big") + c2 + c3
    assert bytes(core.decrypt((x1, y1), c2, c3, d)) == msg


def test_random_k_differs_and_both_verify() -> None:
    """On the real curve the nonce comes from ``secrets``: two signatures of one message differ."""
    key = gm.generate_private_key()
    a, b = gm.sign(key, "m"), gm.sign(key, "m")
    assert a != b
    assert gm.verify(key.public_key, "m", a) and gm.verify(key.public_key, "m", b)
    c1, c2 = gm.encrypt(key.public_key, "m"), gm.encrypt(key.public_key, "m")
    assert c1 != c2 and gm.decrypt(key, c1) == gm.decrypt(key, c2) == b"m"


# --- options


ALL_OPTIONS = [
    gm.GmOptions(
        signature=sig,
        cipher_order=order,
        cipher_format=fmt,
        point_prefix=pre,
        encoding=enc,
        hex_upper=up,
    )  # type: ignore[arg-type]
    for sig, order, fmt, pre, enc, up in itertools.product(
        ("der", "raw"),
        ("C1C3C2", "C1C2C3"),
        ("raw", "der"),
        (True, False),
        ("hex", "base64"),
        (False, True),
    )
    if not (fmt == "der" and not pre) and not (enc == "base64" and up)  # no-op combinations
]


@pytest.fixture(scope="module")
def key() -> gm.PrivateKey:
    return gm.generate_private_key()


@pytest.mark.parametrize(
    "opts", ALL_OPTIONS, ids=lambda o: "-".join(str(v) for v in o.as_mapping().values())[17:]
)
def test_every_option_combination_round_trips(key: gm.PrivateKey, opts: gm.GmOptions) -> None:
    msg = "20251125135320" + "370200-app" + "word"
    sig = gm.sign(key, msg, opts)
    assert gm.verify(key.public_key, msg, sig, opts)
    assert not gm.verify(key.public_key, msg + "x", sig, opts)
    blob = base64.b64decode(sig) if opts.encoding == "base64" else bytes.fromhex(sig)
    if opts.signature == "raw":
        assert len(blob) == 64
    else:
        # SEQUENCE of two INTEGERs, at most 72 bytes (shorter when r or s has leading zeros)
        assert len(blob) <= 72 and len(gm._der_seq(blob, 0x30, 2)) == 2
    if opts.encoding == "hex":
        assert sig == (sig.upper() if opts.hex_upper else sig.lower())
    pt = '[{"satisfaction":"5","winName":"综合受理12号窗口"}]'.encode()
    ct = gm.encrypt(key.public_key, pt, opts)
    assert gm.decrypt(key, ct, opts) == pt
    cblob = base64.b64decode(ct) if opts.encoding == "base64" else bytes.fromhex(ct)
    if opts.cipher_format == "raw":
        assert len(cblob) == (65 if opts.point_prefix else 64) + 32 + len(pt)
        assert (cblob[0] == 4) or not opts.point_prefix
    # the binary form is accepted as well as the text
    assert gm.decrypt(key, cblob, opts) == pt
    # a flipped bit anywhere in C2 or C3 is caught by the SM3 check
    for i in (len(cblob) - 1, len(cblob) - 33):
        bad = bytearray(cblob)
        bad[i] ^= 0x01
        with pytest.raises(gm.GmDecryptError):
            gm.decrypt(key, bytes(bad), opts)


def test_options_that_disagree_do_not_interoperate(key: gm.PrivateKey) -> None:
    msg = b"t"
    assert not gm.verify(key.public_key, msg, gm.sign(key, msg), gm.GmOptions(user_id=b"other"))
    with pytest.raises(gm.GmSignatureError):
        gm.verify(key.public_key, msg, gm.sign(key, msg), gm.GmOptions(signature="raw"))
    with pytest.raises(gm.GmSignatureError, match="hex"):
        gm.verify(key.public_key, msg, gm.sign(key, msg, gm.GmOptions(encoding="base64")))
    pt = b"x" * 40
    ct = gm.encrypt(key.public_key, pt)  # C1C3C2 with 04
    with pytest.raises(gm.GmDecryptError):
        gm.decrypt(key, ct, gm.GmOptions(cipher_order="C1C2C3"))
    with pytest.raises(gm.GmDecryptError):
        gm.decrypt(key, ct, gm.GmOptions(point_prefix=False))
    with pytest.raises(gm.GmDecryptError, match="04"):
        gm.decrypt(key, gm.encrypt(key.public_key, pt, gm.GmOptions(point_prefix=False)))
    der_ct = gm.encrypt(key.public_key, pt, gm.GmOptions(cipher_format="der"))
    with pytest.raises(gm.GmDecryptError, match="C3"):
        gm.decrypt(key, der_ct, gm.GmOptions(cipher_format="der", cipher_order="C1C2C3"))


def test_options_validation_and_mapping() -> None:
    with pytest.raises(gm.GmOptionsError, match="cipher_order"):
        gm.GmOptions(cipher_order="C2C1C3")  # type: ignore[arg-type]
    with pytest.raises(gm.GmOptionsError, match="bytes"):
        gm.GmOptions(user_id="1234567812345678")  # type: ignore[arg-type]
    with pytest.raises(gm.GmOptionsError, match="8191"):
        gm.GmOptions(user_id=b"x" * 8192)
    gm.GmOptions(user_id=b"x" * 8191)
    with pytest.raises(gm.GmOptionsError, match="point_prefix"):
        gm.GmOptions(point_prefix="yes")  # type: ignore[arg-type]
    with pytest.raises(gm.GmOptionsError, match="unknown .*order"):
        gm.GmOptions.from_mapping({"order": "C1C3C2"})
    o = gm.GmOptions.from_mapping({"user_id": "山东", "signature": "raw", "encoding": "base64"})
    assert o.user_id == "山东".encode() and o.signature == "raw"
    assert gm.GmOptions.from_mapping(o.as_mapping()) == o
    assert (
        gm.DEFAULT_OPTIONS == gm.GmOptions() and gm.DEFAULT_OPTIONS.user_id == b"1234567812345678"
    )


def test_plaintext_limits(key: gm.PrivateKey) -> None:
    with pytest.raises(gm.GmError, match="empty"):
        gm.encrypt(key.public_key, b"")
    # refused before any work (allocating the string is the slow part here)
    with pytest.raises(gm.GmError, match="longer than"):
        gm.encrypt(key.public_key, b"\0" * (gm.MAX_PLAINTEXT_BYTES + 1))
    ct = gm.encrypt(key.public_key, b"one")
    with pytest.raises(gm.GmDecryptError, match="shorter"):
        gm.decrypt(key, ct[: 2 * (65 + 32)])  # C1 and C3 but no message
    with pytest.raises(gm.GmDecryptError, match="hex"):
        gm.decrypt(key, ct + "0")
    with pytest.raises(gm.GmDecryptError, match="hex"):
        gm.decrypt(key, "zz" + ct[2:])


def test_c1_not_on_the_curve_is_refused(key: gm.PrivateKey) -> None:
    blob = bytearray(bytes.fromhex(gm.encrypt(key.public_key, b"data")))
    blob[40] ^= 0x01  # y1 no longer matches x1
    with pytest.raises(gm.GmDecryptError, match="PointNotOnCurve"):
        gm.decrypt(key, bytes(blob))


def test_malformed_der_signatures_raise(key: gm.PrivateKey) -> None:
    sig = bytes.fromhex(gm.sign(key, "m"))
    pub = key.public_key
    for bad in (
        sig[:-1],  # truncated
        sig + b"\0",  # trailing byte
        b"\x31" + sig[1:],  # SET, not SEQUENCE
        bytes([0x30, 0x81, len(sig) - 2]) + sig[2:],  # length not minimal
        bytes.fromhex("3006020100020100"),  # (0, 0) is well-formed DER: verifies False below
    ):
        if bad.hex() == "3006020100020100":
            assert not gm.verify(pub, "m", bad)
            continue
        with pytest.raises(gm.GmSignatureError):
            gm.verify(pub, "m", bad)
    with pytest.raises(gm.GmSignatureError, match="64 bytes"):
        gm.verify(pub, "m", b"\0" * 63, gm.GmOptions(signature="raw"))
    # r||s outside 1..n-1 verify False
    assert not gm.verify(pub, "m", b"\xff" * 64, gm.GmOptions(signature="raw"))


# --- keys


def _write(p: Path, data: bytes, mode: int) -> Path:
    p.write_bytes(data)
    os.chmod(p, mode)
    return p


def test_key_files_hex_and_pem(tmp_path: Path, key: gm.PrivateKey) -> None:
    pem = gm.load_private_key(_write(tmp_path / "a.pem", key.pem(), 0o600))
    hx = gm.load_private_key(_write(tmp_path / "a.hex", (key.hex().upper() + "\n").encode(), 0o400))
    assert pem.public_key == hx.public_key == key.public_key
    pub = key.public_key
    for text in (pub.pem(), pub.hex().encode(), pub.hex(prefix=False).encode()):
        assert gm.load_public_key(_write(tmp_path / "pub", text, 0o644)) == pub
    # compressed form
    comp = bytes([2 + (pub.y & 1)]) + pub.x.to_bytes(32, "big")
    assert gm.parse_public_key(comp.hex()) == pub
    # written keys are 0600 and never overwritten
    out = tmp_path / "new.key"
    gm.write_private_key(out, key)
    assert out.stat().st_mode & 0o777 == 0o600
    assert gm.load_private_key(out).public_key == pub
    with pytest.raises(gm.GmKeyError, match="exists"):
        gm.write_private_key(out, key)
    gm.write_private_key(tmp_path / "new.hex", key, form="hex")
    assert gm.load_private_key(tmp_path / "new.hex").public_key == pub


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o666, 0o660])
def test_private_key_readable_by_others_is_refused(
    tmp_path: Path, key: gm.PrivateKey, mode: int
) -> None:
    p = _write(tmp_path / "hall.key", key.pem(), mode)
    with pytest.raises(gm.GmKeyError, match="mode 0[0-7]{3}.*must be 0600") as e:
        gm.load_private_key(p)
    assert key.hex() not in str(e.value) and key.hex().upper() not in str(e.value)


def test_key_errors_are_clear_and_carry_no_secret(tmp_path: Path, key: gm.PrivateKey) -> None:
    with pytest.raises(gm.GmKeyError, match="no SM2 private key file"):
        gm.load_private_key(tmp_path / "missing.key")
    with pytest.raises(gm.GmKeyError, match="not a regular file"):
        gm.load_private_key(tmp_path)
    with pytest.raises(gm.GmKeyError, match="64 hex digits, this one has 62"):
        gm.parse_private_key(key.hex()[:-2])
    with pytest.raises(gm.GmKeyError, match="password-protected"):
        gm.parse_private_key(
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMAA=\n-----END ENCRYPTED PRIVATE KEY-----\n"
        )
    with pytest.raises(gm.GmKeyError, match="out of range"):
        gm.parse_private_key("00" * 32)
    with pytest.raises(gm.GmKeyError, match="out of range"):
        gm.parse_private_key(format(gm.SM2_CURVE.n - 1, "064x"))
    with pytest.raises(gm.GmKeyError, match="not a point"):
        gm.parse_public_key("04" + "11" * 64)
    with pytest.raises(gm.GmKeyError, match="64 bytes"):
        gm.parse_public_key("04" + "11" * 10)
    # a PEM whose stored public key belongs to another private key
    other = gm.generate_private_key()
    pem = key.pem().decode()
    der = base64.b64decode("".join(pem.splitlines()[1:-1]))
    swapped = der.replace(key.public_key.to_bytes(), other.public_key.to_bytes())
    text = gm._pem("PRIVATE KEY", swapped)
    with pytest.raises(gm.GmKeyError, match="does not belong") as e:
        gm.parse_private_key(text)
    assert key.hex() not in str(e.value)
    with pytest.raises(gm.GmKeyError, match="not valid DER"):
        gm.parse_private_key(gm._pem("PRIVATE KEY", der[:-5]))
    with pytest.raises(gm.GmKeyError, match="expected 64 hex digits or a PEM"):
        gm.parse_private_key(b"appWord=secret")


def test_a_private_key_never_shows_its_scalar(key: gm.PrivateKey) -> None:
    secret = key.hex()
    for text in (repr(key), str(key), f"{key}", repr([key]), repr({"k": key})):
        assert secret not in text.lower()
        assert key.public_key.fingerprint[:16] in text
    with pytest.raises(TypeError):
        pickle.dumps(key)
    assert not hasattr(key, "__dict__")  # no attribute dump via vars()
