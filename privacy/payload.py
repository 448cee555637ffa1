"""Framing of a list of serialized ciphertexts into one digest-checked byte payload.

Layout: ``b"FCX1"`` | uint32 count | count x (uint64 length | bytes), big-endian.
"""

from __future__ import annotations

import hashlib
import struct

from .errors import CiphertextError

MAGIC = b"FCX1"
_MAX_BLOBS = 1 << 20


def frame(blobs: list[bytes]) -> bytes:
    """Concatenate ciphertext blobs with length prefixes."""
    parts = [MAGIC, struct.pack(">I", len(blobs))]
    for blob in blobs:
        parts.append(struct.pack(">Q", len(blob)))
        parts.append(blob)
    return b"".join(parts)


def unframe(payload: bytes) -> list[bytes]:
    """Inverse of :func:`frame`; raises :class:`CiphertextError` on any inconsistency."""
    if len(payload) < 8 or payload[:4] != MAGIC:
        raise CiphertextError("payload is not a fedctx ciphertext frame")
    (count,) = struct.unpack_from(">I", payload, 4)
    if count == 0 or count > _MAX_BLOBS:
        raise CiphertextError(f"payload declares an invalid ciphertext count {count}")
    offset, blobs = 8, []
    for index in range(count):
        if offset + 8 > len(payload):
            raise CiphertextError(f"payload truncated before ciphertext {index}")
        (length,) = struct.unpack_from(">Q", payload, offset)
        offset += 8
        if length == 0 or offset + length > len(payload):
            raise CiphertextError(f"payload truncated inside ciphertext {index}")
        blobs.append(payload[offset : offset + length])
        offset += length
    if offset != len(payload):
        raise CiphertextError("payload has trailing bytes after its last ciphertext")
    return blobs


def sha256(data: bytes) -> bytes:
    """Raw SHA-256 digest."""
    return hashlib.sha256(data).digest()
