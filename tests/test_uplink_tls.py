"""HTTPS with mutual TLS between the uplink and the reference receiver (real certificates)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import random
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from haochaping.daemon import keys, store
from haochaping.daemon.bench import uplink as bench
from haochaping.daemon.uplink import delivery, runner
from haochaping.simulator import province


def _cert(tmp: Path, name: str, issuer=None, ca=False, server=False):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    cert = b.sign(issuer[1] if issuer else key, hashes.SHA256())
    (tmp / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kp = tmp / f"{name}.key"
    kp.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    kp.chmod(0o600)
    return cert, key


@pytest.fixture()
def pki(tmp_path):
    ca = _cert(tmp_path, "ca", ca=True)
    _cert(tmp_path, "province", issuer=ca, server=True)
    _cert(tmp_path, "hall", issuer=ca)
    return tmp_path


def test_mtls_delivery(pki, tmp_path):
    kd = tmp_path / "keys"
    keys.init(kd)
    db = tmp_path / "hall.sqlite"
    st = store.Store(db)
    bench.fill(st, 30, random.Random(9))
    st.close()
    with province.Receiver(
        tmp_path / "prov", pubkeys=(str(kd),), tls_cert=str(pki / "province.crt"),
        tls_key=str(pki / "province.key"), client_ca=str(pki / "ca.crt"),
    ) as r:  # fmt: skip
        assert r.url.startswith("https://")
        # without a client certificate the province lets nobody in
        anon = delivery.HttpSink(r.url, tls=delivery.TLS(cafile=str(pki / "ca.crt")))
        with pytest.raises(delivery.Retryable):
            anon.deliver("00000000-0000-4000-8000-000000000000", b"{}")
        anon.close()
        tls = delivery.TLS(
            cafile=str(pki / "ca.crt"),
            client_cert=str(pki / "hall.crt"),
            client_key=str(pki / "hall.key"),
        )
        cfg = runner.UplinkConfig(
            db=str(db), hall_id="hall-tls", keys_dir=str(kd), url=r.url, tls=tls,
            batch_size=10, max_age_s=0.0,
        )  # fmt: skip
        up = runner.Uplink(cfg)
        up.run(until_idle=True)
        up.close()
        assert r.store.stats() == {"batches": 3, "records": 30}
        acks = [json.loads(b)["header"]["batchSeq"] for b in r.store.bodies("hall-tls")]
        assert acks == [1, 2, 3]


def test_https_refuses_an_untrusted_province(pki, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    _cert(other, "ca", ca=True)  # a CA that did not sign the province's certificate
    with province.Receiver(
        tmp_path / "prov", tls_cert=str(pki / "province.crt"), tls_key=str(pki / "province.key")
    ) as r:
        sink = delivery.HttpSink(r.url, tls=delivery.TLS(cafile=str(other / "ca.crt")))
        with pytest.raises(delivery.Retryable, match="CERTIFICATE_VERIFY_FAILED"):
            sink.deliver("00000000-0000-4000-8000-000000000000", b"{}")
        sink.close()
