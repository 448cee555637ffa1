"""Seal the CKKS secret context to each participant so the coordinator only relays opaque bytes.

Model: one participant (the *keyholder*) creates the CKKS secret context and
seals it to every other participant.  Each participant owns a long-term X25519
key pair for sealing, announced under a signature made with the private key of
its TLS client certificate (EC P-256 or Ed25519), which the federation CA
issued with ``CN = participant_id``.

Sealed blob, version 1 (all integers big-endian)::

    b"FCKS" | version u8 = 1 | signature algorithm u8 (1 ECDSA-P256-SHA256, 2 Ed25519)
    | u16 len | federation_id (UTF-8)
    | u16 len | recipient_id (UTF-8)
    | u16 len | public_context_fingerprint (ASCII)
    | ephemeral X25519 public key (32) | nonce (12)
    | u32 len | ChaCha20-Poly1305 ciphertext (secret + 16-byte tag)
    | u16 len | signature

Construction (only ``cryptography`` primitives, composed):

* ``shared = X25519(ephemeral_private, recipient_public)``;
* ``bound = LP(version tag, federation_id, recipient_id, fingerprint,
  SHA-256(sender SubjectPublicKeyInfo), ephemeral_public, recipient_public)``
  where ``LP`` concatenates 4-byte-length-prefixed fields;
* ``key = HKDF-SHA256(shared, salt=None, info=LP(hkdf tag, bound))``;
* ``ciphertext = ChaCha20Poly1305(key).encrypt(nonce, secret, LP(aad tag, bound))``;
* ``signature = Sign(sender certificate key, LP(signature tag, body, bound))`` where
  ``body`` is every blob byte before the signature field.

Binding the sender's public-key hash into the AEAD data means a participant who
strips the keyholder's signature and re-signs the blob as itself makes
decryption fail, so the recipient never attributes the secret to the wrong
sender.  Error messages never contain key, secret or ciphertext bytes.
"""

from __future__ import annotations

import hashlib
import os
import struct
from datetime import datetime, timezone
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID

from privacy.errors import KeyShareError

__all__ = [
    "generate_x25519_keypair",
    "open_sealed",
    "seal",
    "sign_key_announcement",
    "verify_key_announcement",
]

_MAGIC: Final = b"FCKS"
_VERSION: Final = 1
_ALG_ECDSA_P256_SHA256: Final = 1
_ALG_ED25519: Final = 2
_X25519_KEY_BYTES: Final = 32
_NONCE_BYTES: Final = 12
_TAG_BYTES: Final = 16
_MAX_FIELD_BYTES: Final = 1024
_MAX_MASK_KEYS: Final = 4096
_MAX_SIGNATURE_BYTES: Final = 1024
#: Upper bound on a sealed secret (a serialised secret context is ~190 kB at
#: N=4096 and grows to a few MB at N=32768).
MAX_SECRET_BYTES: Final = 64 * 1024 * 1024

_ANNOUNCE_TAG: Final = b"fedctx/keyshare/announce/v1"
#: Announcement tags by purpose: the sealing key, and the mask key of dropout recovery
#: (``privacy.mask_recovery``), so that neither signature can stand for the other.
_ANNOUNCE_TAGS: Final = {"seal": _ANNOUNCE_TAG, "mask": b"fedctx/keyshare/announce-mask/v1"}
_BOUND_TAG: Final = b"fedctx/keyshare/seal/v1"
_HKDF_TAG: Final = b"fedctx/keyshare/seal/hkdf/v1"
_AAD_TAG: Final = b"fedctx/keyshare/seal/aad/v1"
_SIGNATURE_TAG: Final = b"fedctx/keyshare/seal/signature/v1"

_SigningKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
_VerifyingKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


def generate_x25519_keypair() -> tuple[bytes, bytes]:
    """Generate a long-term X25519 key pair for receiving sealed secrets.

    Returns:
        ``(private_raw_32, public_raw_32)``.
    """
    private = x25519.X25519PrivateKey.generate()
    return private.private_bytes_raw(), private.public_key().public_bytes_raw()


def sign_key_announcement(
    *, federation_id: str, participant_id: str, x25519_public: bytes, signing_key_pem: bytes,
    purpose: str = "seal",
) -> bytes:
    """Sign a participant's X25519 public key with its certificate key.

    The signed message is the length-prefixed, domain-separated encoding of
    ``(announce tag v1, federation_id, participant_id, x25519_public)``.

    Args:
        federation_id: Federation the key is announced in.
        participant_id: The announcing participant (its certificate CN).
        x25519_public: 32-byte raw X25519 public key.
        signing_key_pem: PEM private key of the participant's TLS client
            certificate (EC P-256 or Ed25519, unencrypted).
        purpose: ``"seal"`` (the key sealed secrets are sent to) or ``"mask"`` (dropout
            recovery's mask keys, one per masked round: ``x25519_public`` is then their
            concatenation, up to 4096 keys); each has its own tag in the signed message.

    Returns:
        The signature (DER ECDSA or raw Ed25519).

    Raises:
        KeyShareError: If an argument is malformed or the key is unsupported.
    """
    message = _announcement_message(federation_id, participant_id, x25519_public, purpose)
    _, signature = _sign(_load_signing_key(signing_key_pem), message)
    return signature


def verify_key_announcement(
    *,
    federation_id: str,
    participant_id: str,
    x25519_public: bytes,
    signature: bytes,
    certificate_pem: bytes,
    ca_certificate_pem: bytes,
    purpose: str = "seal",
) -> None:
    """Check that an X25519 public key was announced by ``participant_id`` for ``purpose``
    (:func:`sign_key_announcement`).

    Args:
        federation_id: Federation the key is announced in.
        participant_id: Expected announcer; must equal the certificate's CN.
        x25519_public: 32-byte raw X25519 public key.
        signature: Output of :func:`sign_key_announcement`.
        certificate_pem: The announcer's certificate.
        ca_certificate_pem: The federation CA certificate.

    Raises:
        KeyShareError: If the certificate is not issued by the CA, is outside
            its validity period, has another CN, or the signature is invalid.
    """
    message = _announcement_message(federation_id, participant_id, x25519_public, purpose)
    public_key = _verify_certificate(certificate_pem, ca_certificate_pem, participant_id)
    _verify_signature(
        public_key, _algorithm_of(public_key), _as_bytes(signature, "signature"), message
    )


def seal(
    secret: bytes,
    *,
    recipient_x25519_public: bytes,
    federation_id: str,
    recipient_id: str,
    public_context_fingerprint: str,
    sender_signing_key_pem: bytes,
) -> bytes:
    """Encrypt ``secret`` to one recipient and sign the result.

    Args:
        secret: Bytes to seal (the serialised CKKS secret context).
        recipient_x25519_public: Recipient's verified 32-byte X25519 public key.
        federation_id: Federation identifier (bound into the key and AAD).
        recipient_id: Recipient participant id (bound likewise).
        public_context_fingerprint: ``context_fingerprint`` of the public
            context matching ``secret`` (bound likewise).
        sender_signing_key_pem: PEM private key of the sender's certificate.

    Returns:
        The versioned sealed blob.

    Raises:
        KeyShareError: If an argument is malformed or sealing fails.
    """
    secret_bytes = _as_bytes(secret, "secret")
    if not 0 < len(secret_bytes) <= MAX_SECRET_BYTES:
        raise KeyShareError(f"secret must be 1..{MAX_SECRET_BYTES} bytes")
    recipient_public = _as_bytes(recipient_x25519_public, "recipient_x25519_public")
    recipient_key = _load_x25519_public(recipient_public)
    fed = _encode_id(federation_id, "federation_id")
    rcpt = _encode_id(recipient_id, "recipient_id")
    fingerprint = _encode_fingerprint(public_context_fingerprint)
    signing_key = _load_signing_key(sender_signing_key_pem)
    sender_key_id = _key_id(signing_key.public_key())

    ephemeral = x25519.X25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes_raw()
    try:
        shared = ephemeral.exchange(recipient_key)
    except ValueError:  # low-order point: all-zero shared secret
        raise KeyShareError("recipient X25519 public key is invalid") from None
    bound = _bound(fed, rcpt, fingerprint, sender_key_id, ephemeral_public, recipient_public)
    nonce = os.urandom(_NONCE_BYTES)
    ciphertext = ChaCha20Poly1305(_derive_key(shared, bound)).encrypt(
        nonce, secret_bytes, _lp(_AAD_TAG, bound)
    )
    algorithm = _algorithm_of(signing_key.public_key())
    body = b"".join(
        (
            _MAGIC,
            bytes((_VERSION, algorithm)),
            _u16(fed),
            _u16(rcpt),
            _u16(fingerprint),
            ephemeral_public,
            nonce,
            struct.pack(">I", len(ciphertext)),
            ciphertext,
        )
    )
    _, signature = _sign(signing_key, _lp(_SIGNATURE_TAG, body, bound))
    return body + _u16(signature)


def open_sealed(
    blob: bytes,
    *,
    recipient_x25519_private: bytes,
    federation_id: str,
    recipient_id: str,
    public_context_fingerprint: str,
    sender_certificate_pem: bytes,
    ca_certificate_pem: bytes,
    sender_id: str,
) -> bytes:
    """Verify and decrypt a blob made by :func:`seal`.

    Checks, in order: the blob's framing and version, that it names this
    federation, recipient and context fingerprint, that the sender certificate
    was issued by the CA, is valid now and has ``CN == sender_id``, the
    signature, and finally the AEAD decryption.

    Args:
        blob: The sealed blob, as relayed by the coordinator.
        recipient_x25519_private: This participant's 32-byte X25519 private key.
        federation_id: Expected federation.
        recipient_id: This participant's id.
        public_context_fingerprint: Expected public context fingerprint.
        sender_certificate_pem: Certificate of the expected sender (keyholder).
        ca_certificate_pem: The federation CA certificate.
        sender_id: Expected sender id (certificate CN).

    Returns:
        The secret.

    Raises:
        KeyShareError: On any verification or decryption failure.
    """
    parsed = _parse_blob(_as_bytes(blob, "blob"))
    fed = _encode_id(federation_id, "federation_id")
    rcpt = _encode_id(recipient_id, "recipient_id")
    fingerprint = _encode_fingerprint(public_context_fingerprint)
    if parsed.federation_id != fed:
        raise KeyShareError("sealed blob belongs to another federation")
    if parsed.recipient_id != rcpt:
        raise KeyShareError("sealed blob is addressed to another recipient")
    if parsed.fingerprint != fingerprint:
        raise KeyShareError("sealed blob is bound to another public context fingerprint")

    public_key = _verify_certificate(sender_certificate_pem, ca_certificate_pem, sender_id)
    if parsed.algorithm != _algorithm_of(public_key):
        raise KeyShareError("sealed blob signature algorithm does not match the sender certificate")
    private_raw = _as_bytes(recipient_x25519_private, "recipient_x25519_private")
    if len(private_raw) != _X25519_KEY_BYTES:
        raise KeyShareError("recipient X25519 private key must be 32 bytes")
    private_key = x25519.X25519PrivateKey.from_private_bytes(private_raw)
    recipient_public = private_key.public_key().public_bytes_raw()
    bound = _bound(
        fed, rcpt, fingerprint, _key_id(public_key), parsed.ephemeral_public, recipient_public
    )
    _verify_signature(
        public_key, parsed.algorithm, parsed.signature, _lp(_SIGNATURE_TAG, parsed.body, bound)
    )
    try:
        shared = private_key.exchange(
            x25519.X25519PublicKey.from_public_bytes(parsed.ephemeral_public)
        )
    except ValueError:
        raise KeyShareError("sealed blob carries an invalid ephemeral key") from None
    try:
        return ChaCha20Poly1305(_derive_key(shared, bound)).decrypt(
            parsed.nonce, parsed.ciphertext, _lp(_AAD_TAG, bound)
        )
    except InvalidTag:
        raise KeyShareError(
            "sealed blob cannot be decrypted (wrong recipient key or tampered content)"
        ) from None


# --------------------------------------------------------------------------- internals


class _ParsedBlob:
    """Fields of a sealed blob after framing checks (not yet authenticated)."""

    __slots__ = (
        "algorithm",
        "body",
        "ciphertext",
        "ephemeral_public",
        "federation_id",
        "fingerprint",
        "nonce",
        "recipient_id",
        "signature",
    )

    def __init__(
        self,
        *,
        algorithm: int,
        federation_id: bytes,
        recipient_id: bytes,
        fingerprint: bytes,
        ephemeral_public: bytes,
        nonce: bytes,
        ciphertext: bytes,
        body: bytes,
        signature: bytes,
    ) -> None:
        self.algorithm = algorithm
        self.federation_id = federation_id
        self.recipient_id = recipient_id
        self.fingerprint = fingerprint
        self.ephemeral_public = ephemeral_public
        self.nonce = nonce
        self.ciphertext = ciphertext
        self.body = body
        self.signature = signature


class _Reader:
    """Bounds-checked cursor over a byte string."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.pos = 0

    def take(self, size: int) -> bytes:
        if size < 0 or self.pos + size > len(self._data):
            raise KeyShareError("sealed blob is truncated or malformed")
        out = self._data[self.pos : self.pos + size]
        self.pos += size
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16_field(self) -> bytes:
        (size,) = struct.unpack(">H", self.take(2))
        return self.take(size)

    def u32_field(self) -> bytes:
        (size,) = struct.unpack(">I", self.take(4))
        return self.take(size)

    def at_end(self) -> bool:
        return self.pos == len(self._data)


def _parse_blob(blob: bytes) -> _ParsedBlob:
    reader = _Reader(blob)
    if reader.take(len(_MAGIC)) != _MAGIC:
        raise KeyShareError("not a fedctx sealed blob")
    version = reader.u8()
    if version != _VERSION:
        raise KeyShareError(f"unsupported sealed blob version {version}")
    algorithm = reader.u8()
    if algorithm not in (_ALG_ECDSA_P256_SHA256, _ALG_ED25519):
        raise KeyShareError("unsupported signature algorithm in sealed blob")
    federation_id = reader.u16_field()
    recipient_id = reader.u16_field()
    fingerprint = reader.u16_field()
    ephemeral_public = reader.take(_X25519_KEY_BYTES)
    nonce = reader.take(_NONCE_BYTES)
    ciphertext = reader.u32_field()
    if len(ciphertext) < _TAG_BYTES:
        raise KeyShareError("sealed blob is truncated or malformed")
    body_end = reader.pos
    signature = reader.u16_field()
    if not reader.at_end():
        raise KeyShareError("sealed blob has trailing bytes")
    if not signature:
        raise KeyShareError("sealed blob carries no signature")
    return _ParsedBlob(
        algorithm=algorithm,
        federation_id=federation_id,
        recipient_id=recipient_id,
        fingerprint=fingerprint,
        ephemeral_public=ephemeral_public,
        nonce=nonce,
        ciphertext=ciphertext,
        body=blob[:body_end],
        signature=signature,
    )


def _lp(*parts: bytes) -> bytes:
    """Concatenate fields, each prefixed with its 4-byte big-endian length."""
    return b"".join(struct.pack(">I", len(part)) + part for part in parts)


def _u16(field: bytes) -> bytes:
    if len(field) > 0xFFFF:
        raise KeyShareError("field too long")
    return struct.pack(">H", len(field)) + field


def _bound(
    federation_id: bytes,
    recipient_id: bytes,
    fingerprint: bytes,
    sender_key_id: bytes,
    ephemeral_public: bytes,
    recipient_public: bytes,
) -> bytes:
    return _lp(
        _BOUND_TAG,
        federation_id,
        recipient_id,
        fingerprint,
        sender_key_id,
        ephemeral_public,
        recipient_public,
    )


def _derive_key(shared: bytes, bound: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_lp(_HKDF_TAG, bound)).derive(
        shared
    )


def _announcement_message(federation_id: str, participant_id: str, x25519_public: bytes,
                          purpose: str) -> bytes:
    if purpose not in _ANNOUNCE_TAGS:
        raise KeyShareError(f"purpose must be one of {sorted(_ANNOUNCE_TAGS)}")
    public = _as_bytes(x25519_public, "x25519_public")
    if purpose == "mask" and public and len(public) % _X25519_KEY_BYTES == 0 \
            and len(public) <= _MAX_MASK_KEYS * _X25519_KEY_BYTES:
        for offset in range(0, len(public), _X25519_KEY_BYTES):
            _load_x25519_public(public[offset:offset + _X25519_KEY_BYTES])
    else:
        _load_x25519_public(public)
    return _lp(
        _ANNOUNCE_TAGS[purpose],
        _encode_id(federation_id, "federation_id"),
        _encode_id(participant_id, "participant_id"),
        public,
    )


def _as_bytes(value: object, name: str) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise KeyShareError(f"{name} must be bytes")
    return bytes(value)


def _encode_id(value: object, name: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise KeyShareError(f"{name} must be a non-empty string")
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:
        raise KeyShareError(f"{name} is not valid UTF-8") from None
    if len(encoded) > _MAX_FIELD_BYTES:
        raise KeyShareError(f"{name} is longer than {_MAX_FIELD_BYTES} bytes")
    return encoded


def _encode_fingerprint(value: object) -> bytes:
    if (
        not isinstance(value, str)
        or len(value) != 64
        or any(c not in "0123456789abcdef" for c in value)
    ):
        raise KeyShareError("public_context_fingerprint must be 64 lowercase hex characters")
    return value.encode("ascii")


def _load_x25519_public(raw: bytes) -> x25519.X25519PublicKey:
    if len(raw) != _X25519_KEY_BYTES:
        raise KeyShareError("X25519 public key must be 32 bytes")
    try:
        return x25519.X25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise KeyShareError("invalid X25519 public key") from None


def _load_signing_key(pem: object) -> _SigningKey:
    data = _as_bytes(pem, "signing key PEM")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise KeyShareError("signing key is not an unencrypted PEM private key") from None
    except Exception:  # cryptography raises UnsupportedAlgorithm for exotic keys
        raise KeyShareError("signing key cannot be loaded") from None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise KeyShareError("signing key must be EC P-256 or Ed25519")


def _algorithm_of(public_key: object) -> int:
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return _ALG_ED25519
    if isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(
        public_key.curve, ec.SECP256R1
    ):
        return _ALG_ECDSA_P256_SHA256
    raise KeyShareError("certificate key must be EC P-256 or Ed25519")


def _key_id(public_key: _VerifyingKey) -> bytes:
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()


def _sign(key: _SigningKey, message: bytes) -> tuple[int, bytes]:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return _ALG_ED25519, key.sign(message)
    return _ALG_ECDSA_P256_SHA256, key.sign(message, ec.ECDSA(hashes.SHA256()))


def _verify_signature(
    public_key: _VerifyingKey, algorithm: int, signature: bytes, message: bytes
) -> None:
    if not signature or len(signature) > _MAX_SIGNATURE_BYTES:
        raise KeyShareError("signature is missing or malformed")
    try:
        if algorithm == _ALG_ED25519 and isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, message)
        elif algorithm == _ALG_ECDSA_P256_SHA256 and isinstance(
            public_key, ec.EllipticCurvePublicKey
        ):
            public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        else:
            raise KeyShareError("signature algorithm does not match the certificate key")
    except InvalidSignature:
        raise KeyShareError("signature verification failed") from None
    except ValueError:  # malformed DER signature
        raise KeyShareError("signature verification failed") from None


def _load_certificate(pem: object, name: str) -> x509.Certificate:
    data = _as_bytes(pem, name)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise KeyShareError(f"{name} is not a PEM X.509 certificate") from None


def _check_validity(cert: x509.Certificate, name: str, now: datetime) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise KeyShareError(f"{name} is outside its validity period")


def _verify_certificate(
    certificate_pem: object, ca_certificate_pem: object, expected_cn: str
) -> _VerifyingKey:
    """Verify a leaf certificate against the CA and return its public key."""
    if not isinstance(expected_cn, str) or not expected_cn:
        raise KeyShareError("expected participant id must be a non-empty string")
    cert = _load_certificate(certificate_pem, "certificate")
    ca = _load_certificate(ca_certificate_pem, "CA certificate")
    now = datetime.now(timezone.utc)
    _check_validity(ca, "CA certificate", now)
    try:
        ca_constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise KeyShareError("CA certificate lacks the BasicConstraints extension") from None
    except ValueError:
        raise KeyShareError("CA certificate has malformed extensions") from None
    if not ca_constraints.ca:
        raise KeyShareError("CA certificate is not a CA (BasicConstraints ca=False)")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise KeyShareError("certificate is not issued by the federation CA") from None
    _check_validity(cert, "certificate", now)
    try:
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        raise KeyShareError("certificate subject is malformed") from None
    if len(names) != 1 or names[0].value != expected_cn:
        raise KeyShareError(f"certificate CN does not match participant id {expected_cn!r}")
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    except ValueError:
        raise KeyShareError("certificate has malformed extensions") from None
    if usage is not None and not usage.digital_signature:
        raise KeyShareError("certificate key usage does not allow digital signatures")
    public_key = cert.public_key()
    if not isinstance(public_key, (ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey)):
        raise KeyShareError("certificate key must be EC P-256 or Ed25519")
    _algorithm_of(public_key)  # rejects curves other than P-256
    return public_key


_CONTEXT_MAGIC = b"FCXK"
_CONTEXT_AAD_TAG = b"fedctx/keyshare/secret-context/v1"


def encrypt_secret_context(
    secret: bytes, *, federation_id: str, public_context_fingerprint: str
) -> tuple[bytes, bytes]:
    """Encrypt a (large) secret context once under a fresh 32-byte data key.

    The keyholder publishes the returned blob once and seals (:func:`seal`) only the data
    key to each recipient, so publishing costs O(size + 32 x recipients) rather than
    O(size x recipients). The AEAD binds the federation and the context fingerprint.

    Returns:
        ``(data_key, blob)``; the data key must only ever travel sealed.
    """
    secret_bytes = _as_bytes(secret, "secret")
    if not 0 < len(secret_bytes) <= MAX_SECRET_BYTES:
        raise KeyShareError(f"secret must be 1..{MAX_SECRET_BYTES} bytes")
    fed = _encode_id(federation_id, "federation_id")
    fingerprint = _encode_fingerprint(public_context_fingerprint)
    data_key = ChaCha20Poly1305.generate_key()
    nonce = os.urandom(_NONCE_BYTES)
    aad = _lp(_CONTEXT_AAD_TAG, fed, fingerprint)
    ciphertext = ChaCha20Poly1305(data_key).encrypt(nonce, secret_bytes, aad)
    return data_key, _CONTEXT_MAGIC + nonce + ciphertext


def decrypt_secret_context(
    blob: bytes, *, data_key: bytes, federation_id: str, public_context_fingerprint: str
) -> bytes:
    """Inverse of :func:`encrypt_secret_context`; any tampering raises KeyShareError."""
    data = _as_bytes(blob, "blob")
    key = _as_bytes(data_key, "data_key")
    if len(key) != 32 or len(data) < 4 + _NONCE_BYTES + 16 or data[:4] != _CONTEXT_MAGIC:
        raise KeyShareError("encrypted secret context is malformed")
    fed = _encode_id(federation_id, "federation_id")
    fingerprint = _encode_fingerprint(public_context_fingerprint)
    nonce, ciphertext = data[4 : 4 + _NONCE_BYTES], data[4 + _NONCE_BYTES :]
    try:
        return ChaCha20Poly1305(key).decrypt(
            nonce, ciphertext, _lp(_CONTEXT_AAD_TAG, fed, fingerprint)
        )
    except InvalidTag:
        raise KeyShareError(
            "encrypted secret context failed authentication (wrong key, federation or "
            "fingerprint, or tampered)"
        ) from None
