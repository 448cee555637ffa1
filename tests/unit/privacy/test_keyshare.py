"""Unit tests for privacy.keyshare (sealing the CKKS secret context)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from privacy import keyshare
from privacy.errors import KeyShareError

FED = "fed-test"
FINGERPRINT = hashlib.sha256(b"public context").hexdigest()
SECRET = b"\x00secret-context-bytes\xff" * 100

# ----------------------------------------------------------------- certificate fixture helpers


@dataclass(frozen=True)
class Identity:
    """A participant: certificate key, certificate and X25519 sealing key pair."""

    name: str
    key_pem: bytes
    cert_pem: bytes
    x_private: bytes
    x_public: bytes


@dataclass(frozen=True)
class Ca:
    """A throwaway certificate authority."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str = "fedctx test CA", *, is_ca: bool = True) -> Ca:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Ca(key=key, cert=cert)


def make_identity(
    ca: Ca,
    cn: str,
    *,
    key_type: str = "ec",
    not_before: timedelta = timedelta(days=-1),
    not_after: timedelta = timedelta(days=10),
) -> Identity:
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
    if key_type == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
    elif key_type == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    elif key_type == "p384":
        key = ec.generate_private_key(ec.SECP384R1())
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + not_before)
        .not_valid_after(now + not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca.key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    x_private, x_public = keyshare.generate_x25519_keypair()
    return Identity(
        name=cn,
        key_pem=key_pem,
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        x_private=x_private,
        x_public=x_public,
    )


@pytest.fixture(scope="module")
def ca() -> Ca:
    return make_ca()


@pytest.fixture(scope="module")
def keyholder(ca: Ca) -> Identity:
    return make_identity(ca, "alice")


@pytest.fixture(scope="module")
def bob(ca: Ca) -> Identity:
    return make_identity(ca, "bob")


@pytest.fixture(scope="module")
def carol(ca: Ca) -> Identity:
    return make_identity(ca, "carol")


def seal_to(sender: Identity, recipient: Identity, **overrides: object) -> bytes:
    kwargs: dict[str, object] = {
        "recipient_x25519_public": recipient.x_public,
        "federation_id": FED,
        "recipient_id": recipient.name,
        "public_context_fingerprint": FINGERPRINT,
        "sender_signing_key_pem": sender.key_pem,
    }
    kwargs.update(overrides)
    return keyshare.seal(SECRET, **kwargs)  # type: ignore[arg-type]


def open_as(
    blob: bytes, recipient: Identity, sender: Identity, ca: Ca, **overrides: object
) -> bytes:
    kwargs: dict[str, object] = {
        "recipient_x25519_private": recipient.x_private,
        "federation_id": FED,
        "recipient_id": recipient.name,
        "public_context_fingerprint": FINGERPRINT,
        "sender_certificate_pem": sender.cert_pem,
        "ca_certificate_pem": ca.pem,
        "sender_id": sender.name,
    }
    kwargs.update(overrides)
    return keyshare.open_sealed(blob, **kwargs)  # type: ignore[arg-type]


# ----------------------------------------------------------------- key generation / announcements


def test_generate_x25519_keypair() -> None:
    private, public = keyshare.generate_x25519_keypair()
    assert len(private) == 32
    assert len(public) == 32
    assert keyshare.generate_x25519_keypair()[1] != public


@pytest.mark.parametrize("key_type", ["ec", "ed25519"])
def test_announcement_round_trip(ca: Ca, key_type: str) -> None:
    who = make_identity(ca, "dave", key_type=key_type)
    sig = keyshare.sign_key_announcement(
        federation_id=FED,
        participant_id="dave",
        x25519_public=who.x_public,
        signing_key_pem=who.key_pem,
    )
    keyshare.verify_key_announcement(
        federation_id=FED,
        participant_id="dave",
        x25519_public=who.x_public,
        signature=sig,
        certificate_pem=who.cert_pem,
        ca_certificate_pem=ca.pem,
    )


def _announce(who: Identity) -> bytes:
    return keyshare.sign_key_announcement(
        federation_id=FED,
        participant_id=who.name,
        x25519_public=who.x_public,
        signing_key_pem=who.key_pem,
    )


def test_announcement_rejections(ca: Ca, bob: Identity, carol: Identity) -> None:
    sig = _announce(bob)
    good = {
        "federation_id": FED,
        "participant_id": bob.name,
        "x25519_public": bob.x_public,
        "signature": sig,
        "certificate_pem": bob.cert_pem,
        "ca_certificate_pem": ca.pem,
    }
    keyshare.verify_key_announcement(**good)  # type: ignore[arg-type]
    rogue_ca = make_ca("rogue CA")
    rogue_bob = make_identity(rogue_ca, "bob")
    bad_cases: list[dict[str, object]] = [
        {"participant_id": "carol"},  # CN mismatch
        {"certificate_pem": carol.cert_pem},  # someone else's certificate
        {"federation_id": "other-fed"},
        {"x25519_public": carol.x_public},  # substituted sealing key
        {"x25519_public": b"\x01" * 31},
        {"signature": sig[:-1] + bytes([sig[-1] ^ 1])},
        {"signature": b""},
        {
            "certificate_pem": rogue_bob.cert_pem,
            "signature": _announce(rogue_bob),
            "x25519_public": rogue_bob.x_public,
        },
        {"ca_certificate_pem": rogue_ca.pem},
        {"certificate_pem": b"not a certificate"},
    ]
    for case in bad_cases:
        with pytest.raises(KeyShareError):
            keyshare.verify_key_announcement(**{**good, **case})  # type: ignore[arg-type]


def test_announcement_rejects_expired_and_not_yet_valid(ca: Ca) -> None:
    for window in (
        {"not_before": timedelta(days=-10), "not_after": timedelta(days=-1)},
        {"not_before": timedelta(days=1), "not_after": timedelta(days=10)},
    ):
        who = make_identity(ca, "erin", **window)
        with pytest.raises(KeyShareError, match="validity"):
            keyshare.verify_key_announcement(
                federation_id=FED,
                participant_id="erin",
                x25519_public=who.x_public,
                signature=_announce(who),
                certificate_pem=who.cert_pem,
                ca_certificate_pem=ca.pem,
            )


def test_announcement_rejects_non_ca_issuer() -> None:
    not_a_ca = make_ca("leafy", is_ca=False)
    who = make_identity(not_a_ca, "frank")
    with pytest.raises(KeyShareError):
        keyshare.verify_key_announcement(
            federation_id=FED,
            participant_id="frank",
            x25519_public=who.x_public,
            signature=_announce(who),
            certificate_pem=who.cert_pem,
            ca_certificate_pem=not_a_ca.pem,
        )


@pytest.mark.parametrize("key_type", ["rsa", "p384"])
def test_unsupported_signing_keys(ca: Ca, key_type: str) -> None:
    who = make_identity(ca, "gina", key_type=key_type)
    with pytest.raises(KeyShareError):
        _announce(who)
    with pytest.raises(KeyShareError):
        keyshare.sign_key_announcement(
            federation_id=FED,
            participant_id="gina",
            x25519_public=who.x_public,
            signing_key_pem=b"junk",
        )


# ----------------------------------------------------------------- seal / open


@pytest.mark.parametrize("key_type", ["ec", "ed25519"])
def test_seal_open_round_trip(ca: Ca, bob: Identity, key_type: str) -> None:
    sender = make_identity(ca, "alice", key_type=key_type)
    blob = seal_to(sender, bob)
    assert blob.startswith(b"FCKS\x01")
    assert SECRET not in blob
    assert open_as(blob, bob, sender, ca) == SECRET


def test_seal_is_randomised(keyholder: Identity, bob: Identity) -> None:
    assert seal_to(keyholder, bob) != seal_to(keyholder, bob)


def test_tampered_blob_is_rejected(ca: Ca, keyholder: Identity, bob: Identity) -> None:
    blob = seal_to(keyholder, bob)
    # every byte position matters: header, ephemeral key, nonce, ciphertext, signature
    positions = sorted(
        {0, 4, 5, 6, 8, 20, 60, 90, 100, len(blob) // 2, len(blob) - 80, len(blob) - 1}
    )
    for pos in positions:
        tampered = bytearray(blob)
        tampered[pos] ^= 0x01
        with pytest.raises(KeyShareError):
            open_as(bytes(tampered), bob, keyholder, ca)
    for bad in (blob[:-1], blob + b"\x00", blob[:40], b"", b"FCKS\x02" + blob[5:]):
        with pytest.raises(KeyShareError):
            open_as(bad, bob, keyholder, ca)


def test_wrong_recipient(ca: Ca, keyholder: Identity, bob: Identity, carol: Identity) -> None:
    blob = seal_to(keyholder, bob)
    with pytest.raises(KeyShareError, match="another recipient"):
        open_as(blob, carol, keyholder, ca)
    # carol claims to be bob but only has her own private key
    with pytest.raises(KeyShareError):
        open_as(blob, carol, keyholder, ca, recipient_id=bob.name)


def test_wrong_federation_and_fingerprint(ca: Ca, keyholder: Identity, bob: Identity) -> None:
    blob = seal_to(keyholder, bob)
    with pytest.raises(KeyShareError, match="federation"):
        open_as(blob, bob, keyholder, ca, federation_id="other-fed")
    with pytest.raises(KeyShareError, match="fingerprint"):
        open_as(
            blob, bob, keyholder, ca, public_context_fingerprint=hashlib.sha256(b"x").hexdigest()
        )
    with pytest.raises(KeyShareError):
        open_as(blob, bob, keyholder, ca, public_context_fingerprint="not-hex")


def test_sender_certificate_not_from_ca(ca: Ca, bob: Identity) -> None:
    rogue_ca = make_ca("rogue CA")
    impostor = make_identity(rogue_ca, "alice")
    blob = seal_to(impostor, bob)
    with pytest.raises(KeyShareError, match="not issued by the federation CA"):
        open_as(blob, bob, impostor, ca)


def test_sender_cn_mismatch(ca: Ca, keyholder: Identity, bob: Identity) -> None:
    blob = seal_to(keyholder, bob)
    with pytest.raises(KeyShareError, match="CN"):
        open_as(blob, bob, keyholder, ca, sender_id="mallory")


def test_expired_sender_certificate(ca: Ca, bob: Identity) -> None:
    expired = make_identity(
        ca, "alice", not_before=timedelta(days=-10), not_after=timedelta(days=-1)
    )
    with pytest.raises(KeyShareError, match="validity"):
        open_as(seal_to(expired, bob), bob, expired, ca)


def test_coordinator_substituted_blob(
    ca: Ca, keyholder: Identity, bob: Identity, carol: Identity
) -> None:
    # (1) coordinator seals its own secret with a key that has no CA certificate
    rogue = make_identity(make_ca("coordinator CA"), "alice")
    with pytest.raises(KeyShareError):
        open_as(seal_to(rogue, bob), bob, keyholder, ca)
    # (2) coordinator relays a blob another legitimate participant sealed to bob
    with pytest.raises(KeyShareError, match="signature"):
        open_as(seal_to(carol, bob), bob, keyholder, ca)
    # (3) coordinator swaps the blobs of two recipients
    with pytest.raises(KeyShareError):
        open_as(seal_to(keyholder, carol), bob, keyholder, ca)
    # (4) replay of an older blob for another context
    old = seal_to(keyholder, bob, public_context_fingerprint=hashlib.sha256(b"old").hexdigest())
    with pytest.raises(KeyShareError):
        open_as(old, bob, keyholder, ca)


def test_resigned_blob_is_not_misattributed(
    ca: Ca, keyholder: Identity, bob: Identity, carol: Identity
) -> None:
    """Carol strips alice's signature and re-signs; bob must not accept it as carol's."""
    from privacy.keyshare import _SIGNATURE_TAG, _bound, _key_id, _lp, _u16

    blob = seal_to(keyholder, bob)
    parsed = keyshare._parse_blob(blob)
    carol_key = serialization.load_pem_private_key(carol.key_pem, password=None)
    assert isinstance(carol_key, ec.EllipticCurvePrivateKey)
    bound = _bound(
        FED.encode(),
        b"bob",
        FINGERPRINT.encode(),
        _key_id(carol_key.public_key()),
        parsed.ephemeral_public,
        bob.x_public,
    )
    signature = carol_key.sign(_lp(_SIGNATURE_TAG, parsed.body, bound), ec.ECDSA(hashes.SHA256()))
    forged = parsed.body + _u16(signature)
    with pytest.raises(KeyShareError, match="cannot be decrypted"):
        open_as(forged, bob, carol, ca)


def test_seal_rejects_bad_arguments(keyholder: Identity, bob: Identity) -> None:
    with pytest.raises(KeyShareError):
        seal_to(keyholder, bob, recipient_x25519_public=b"\x00" * 32)  # low-order point
    with pytest.raises(KeyShareError):
        seal_to(keyholder, bob, recipient_x25519_public=b"\x01" * 16)
    with pytest.raises(KeyShareError):
        seal_to(keyholder, bob, federation_id="")
    with pytest.raises(KeyShareError):
        seal_to(keyholder, bob, public_context_fingerprint="ABC")
    with pytest.raises(KeyShareError):
        seal_to(keyholder, bob, sender_signing_key_pem=b"-----BEGIN PRIVATE KEY-----\n")
    with pytest.raises(KeyShareError):
        keyshare.seal(
            b"",
            recipient_x25519_public=bob.x_public,
            federation_id=FED,
            recipient_id=bob.name,
            public_context_fingerprint=FINGERPRINT,
            sender_signing_key_pem=keyholder.key_pem,
        )


def test_errors_never_contain_key_bytes(
    ca: Ca, keyholder: Identity, bob: Identity, carol: Identity
) -> None:
    blob = seal_to(keyholder, bob)
    with pytest.raises(KeyShareError) as info:
        open_as(blob, carol, keyholder, ca, recipient_id=bob.name)
    message = str(info.value)
    for secret in (carol.x_private, bob.x_private, SECRET[:16]):
        assert secret.hex() not in message
        assert repr(secret) not in message


def test_secret_context_is_encrypted_once_and_bound() -> None:
    """Publishing scales with recipients x 32 bytes: the context itself travels once."""
    fp = "ab" * 32
    data_key, blob = keyshare.encrypt_secret_context(b"secret-context" * 1000,
                                                     federation_id="fed",
                                                     public_context_fingerprint=fp)
    assert len(data_key) == 32 and b"secret-context" not in blob
    assert keyshare.decrypt_secret_context(blob, data_key=data_key, federation_id="fed",
                                           public_context_fingerprint=fp) \
        == b"secret-context" * 1000
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    for kwargs in (
        {"blob": tampered, "data_key": data_key, "federation_id": "fed",
         "public_context_fingerprint": fp},
        {"blob": blob, "data_key": bytes(32), "federation_id": "fed",
         "public_context_fingerprint": fp},
        {"blob": blob, "data_key": data_key, "federation_id": "other",
         "public_context_fingerprint": fp},
        {"blob": blob, "data_key": data_key, "federation_id": "fed",
         "public_context_fingerprint": "cd" * 32},
        {"blob": b"junk", "data_key": data_key, "federation_id": "fed",
         "public_context_fingerprint": fp},
    ):
        with pytest.raises(KeyShareError):
            keyshare.decrypt_secret_context(**kwargs)
