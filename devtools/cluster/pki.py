"""Certificates and keys for the test cluster, made with `cryptography`.

One CA signs every serving and client certificate (and kube-controller-manager's cluster
signer uses it too), so a single ca.crt verifies everything. EC P-256 keys keep generation
instant. Nothing here touches the network or any file outside the directory it is given.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The apiserver's serving names: loopback for us, the service IP and DNS names for in-cluster
# clients a later real node will run.
SERVING_IPS = ("127.0.0.1", "10.0.0.1")
SERVING_DNS = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)

# Client identities: (file stem, common name = user, organisations = groups).
CLIENTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("admin", "thpcheck-admin", ("system:masters",)),
    ("kube-controller-manager", "system:kube-controller-manager", ()),
    ("kube-scheduler", "system:kube-scheduler", ()),
    ("kwok", "thpcheck-kwok", ("system:masters",)),
    ("apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",)),
)


@dataclass(frozen=True)
class Pki:
    """Paths of the generated PEM files."""

    dir: Path

    @property
    def ca_crt(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"

    def crt(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write a private key readable by its owner only."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.touch(mode=0o600)
    path.write_bytes(pem)


def _write_crt(path: Path, crt: x509.Certificate) -> None:
    path.write_bytes(crt.public_bytes(serialization.Encoding.PEM))


def _name(cn: str, orgs: Sequence[str] = ()) -> x509.Name:
    """CN is the Kubernetes user name, each O one of its groups."""
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    attrs += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    return x509.Name(attrs)


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
             days: int) -> x509.CertificateBuilder:
    """Common validity window; backdated a minute to tolerate clock skew between steps."""
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=days))
    )


def _make_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _new_key()
    name = _name("thpcheck-test-ca")
    crt = (
        _builder(name, name, key.public_key(), days=365)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, crt


def _leaf(ca_key: ec.EllipticCurvePrivateKey, ca_crt: x509.Certificate, subject: x509.Name,
          usage: x509.ObjectIdentifier,
          sans: list[x509.GeneralName] | None = None) -> tuple[ec.EllipticCurvePrivateKey,
                                                               x509.Certificate]:
    """A certificate for one server or client, signed by the CA."""
    key = _new_key()
    builder = (
        _builder(subject, ca_crt.subject, key.public_key(), days=30)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def serving_sans(extra_dns: tuple[str, ...] = ()) -> list[x509.GeneralName]:
    """The apiserver's SANs; also reused for kwok's kubelet-API server."""
    names: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address(ip)) for ip in SERVING_IPS
    ]
    names += [x509.DNSName(d) for d in (*SERVING_DNS, *extra_dns)]
    return names


def write_pki(directory: Path) -> Pki:
    """Generate the CA, serving, client and service-account keys into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory)
    ca_key, ca_crt = _make_ca()
    _write_key(pki.ca_key, ca_key)
    _write_crt(pki.ca_crt, ca_crt)

    for name in ("apiserver", "kwok-serving"):
        key, crt = _leaf(ca_key, ca_crt, _name(name), ExtendedKeyUsageOID.SERVER_AUTH,
                         serving_sans())
        _write_key(pki.key(name), key)
        _write_crt(pki.crt(name), crt)

    for stem, cn, orgs in CLIENTS:
        key, crt = _leaf(ca_key, ca_crt, _name(cn, orgs), ExtendedKeyUsageOID.CLIENT_AUTH)
        _write_key(pki.key(stem), key)
        _write_crt(pki.crt(stem), crt)

    sa_key = _new_key()
    _write_key(pki.sa_key, sa_key)
    pki.sa_pub.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return pki


def issue_client_cert(pki: Pki, stem: str, cn: str,
                      orgs: Sequence[str] = ()) -> tuple[Path, Path]:
    """Sign one more client identity with the cluster CA (e.g. CN=system:node:<name>,
    O=system:nodes for a real kubelet, or a plain user for RBAC tests); returns (crt, key)."""
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"unexpected CA key type in {pki.ca_key}")
    ca_crt = x509.load_pem_x509_certificate(pki.ca_crt.read_bytes())
    key, crt = _leaf(ca_key, ca_crt, _name(cn, orgs), ExtendedKeyUsageOID.CLIENT_AUTH)
    _write_key(pki.key(stem), key)
    _write_crt(pki.crt(stem), crt)
    return pki.crt(stem), pki.key(stem)
