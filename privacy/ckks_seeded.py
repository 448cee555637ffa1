"""Seeded symmetric CKKS encryption through ``tenseal.sealapi``: half-size ciphertexts.

SEAL can serialise a *symmetric-key* ciphertext with its second polynomial replaced by the
PRNG seed that generated it, which halves the bytes on the wire; TenSEAL's loader expands the
seed transparently, so the coordinator needs nothing new.  TenSEAL's high-level API does not
produce such ciphertexts, and ``tenseal.sealapi`` offers only path-based I/O, so the secret
key and each ciphertext pass through an anonymous in-memory file (Linux ``memfd``).  Needs
the secret context; :func:`select_seeded` falls back to public-key encryption elsewhere.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref

import numpy as np
import tenseal as ts

from privacy import ckks_wire
from privacy.errors import ConfigError, CryptoError

__all__ = ["SeededEncryptor", "seeded_available", "seeded_encryptor", "select_seeded"]

_LOG = logging.getLogger(__name__)


class SeededEncryptor:
    """SEAL symmetric-key encryptor whose ciphertexts serialise with a PRNG seed.

    ``tenseal.sealapi`` only offers path-based I/O for SEAL objects, so key
    material and ciphertexts pass through an anonymous in-memory file
    (``memfd``); nothing touches a file system.  The secret-key file is
    truncated and closed as soon as the key is loaded.
    """

    def __init__(self, ctx: ts.Context) -> None:
        from tenseal import sealapi  # local: only needed on this path

        seal_ctx = ctx.seal_context().data
        key_fd = os.memfd_create("fedctx-ckks-key", os.MFD_CLOEXEC)
        try:
            path = f"/proc/self/fd/{key_fd}"
            seal_ctx.key_context_data().parms().save(path)
            parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
            parms.load(path)
            context = sealapi.SEALContext(parms, True, sealapi.SEC_LEVEL_TYPE.TC128)
            if tuple(context.first_parms_id()) != tuple(seal_ctx.first_parms_id()):
                raise CryptoError("sealapi context does not match the TenSEAL context")
            ctx.secret_key().data.save(path)
            secret_key = sealapi.SecretKey()
            secret_key.load(context, path)
        finally:
            try:
                os.ftruncate(key_fd, 0)
            finally:
                os.close(key_fd)
        self._sealapi = sealapi
        self._context = context
        self._encoder = sealapi.CKKSEncoder(context)
        self._encryptor = sealapi.Encryptor(context, secret_key)
        self._lock = threading.Lock()
        self._out_fd = os.memfd_create("fedctx-ckks-ct", os.MFD_CLOEXEC)
        self._out_path = f"/proc/self/fd/{self._out_fd}"
        weakref.finalize(self, os.close, self._out_fd)

    def encrypt(self, chunk: np.ndarray, scale: float) -> bytes:
        """Encrypt one chunk (<= slot_count values) into a TenSEAL vector blob."""
        plain = self._sealapi.Plaintext()
        self._encoder.encode(chunk.tolist(), scale, plain)
        serializable = self._encryptor.encrypt_symmetric(plain)
        with self._lock:
            serializable.save(self._out_path)
            seal_ct = os.pread(self._out_fd, os.fstat(self._out_fd).st_size, 0)
        return ckks_wire.encode_vector_blob(int(chunk.size), seal_ct, scale)


_SEEDED: weakref.WeakKeyDictionary[ts.Context, SeededEncryptor] = weakref.WeakKeyDictionary()
_SEEDED_LOCK = threading.Lock()


def seeded_available() -> bool:
    """Whether this host can make seeded ciphertexts (Linux ``memfd`` and ``sealapi``)."""
    if not hasattr(os, "memfd_create") or not os.path.isdir("/proc/self/fd"):
        return False
    try:
        from tenseal import sealapi
    except ImportError:
        return False
    return hasattr(sealapi, "Encryptor")


def select_seeded(ctx: ts.Context, seeded: bool | None) -> bool:
    """Whether to encrypt seeded under ``ctx``: ``None`` where possible, ``True`` or a
    :class:`CryptoError`, ``False`` never. A context whose secret key was dropped forgets
    its cached encryptor (and with it the key)."""
    if seeded is not None and not isinstance(seeded, bool):
        raise ConfigError("seeded must be True, False or None")
    if seeded is False:
        return False
    has_secret = bool(ctx.has_secret_key())
    if not has_secret:
        with _SEEDED_LOCK:  # the context was made public: forget the cached key
            _SEEDED.pop(ctx, None)
    possible = has_secret and seeded_available()
    if seeded is True and not possible:
        raise CryptoError("seeded encryption needs the secret context and Linux memfd support")
    if not possible:
        _LOG.debug("seeded CKKS encryption unavailable; using public-key encryption")
    return possible


def seeded_encryptor(ctx: ts.Context) -> SeededEncryptor:
    """The encryptor cached for ``ctx`` (built once per context, thread-safe); a setup
    failure is a :class:`CryptoError` naming only the exception's type."""
    with _SEEDED_LOCK:
        encryptor = _SEEDED.get(ctx)
        if encryptor is None:
            try:
                encryptor = SeededEncryptor(ctx)
            except CryptoError:
                raise
            except Exception as exc:
                raise CryptoError(
                    f"cannot set up seeded encryption: {type(exc).__name__}"
                ) from None
            _SEEDED[ctx] = encryptor
        return encryptor
