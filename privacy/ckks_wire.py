"""Strict framing of TenSEAL's serialisations: a protobuf wire-format reader and writer.

These are framing checks only, not cryptography: a TenSEAL ``CKKSVectorProto`` or
``TenSEALContextProto`` is split into its fields and their wire types, sizes and SEAL header
are checked before any bytes reach SEAL's own deserialiser (whose C++ errors have no stable
Python types), so that a malformed or oversized blob is refused with a typed
:class:`~privacy.errors.CryptoError` and a message that carries none of its bytes.
"""

from __future__ import annotations

import struct
from typing import Final

from privacy.errors import CiphertextError, CryptoError

__all__ = [
    "decode_vector_frame",
    "encode_varint",
    "encode_vector_blob",
    "parse_context_proto",
    "parse_proto",
    "read_varint",
]

#: SEALHeader: magic 0xA15E (little-endian), header size 16, ..., u64 total size.
_SEAL_MAGIC: Final = b"\x5e\xa1\x10"
_SEAL_HEADER_BYTES: Final = 16


def read_varint(data: bytes, pos: int, error: type[CryptoError]) -> tuple[int, int]:
    """``(value, next position)`` of the base-128 varint at ``pos``; ``error`` if it is
    truncated or longer than 10 bytes."""
    result = 0
    for shift in range(0, 70, 7):
        if pos >= len(data):
            raise error("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
    raise error("varint too long")


def parse_proto(data: bytes, error: type[CryptoError]) -> dict[int, list[tuple[int, int | bytes]]]:
    """Split a protobuf message into ``{field: [(wire_type, value), ...]}``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise error("expected bytes")
    data = bytes(data)
    fields: dict[int, list[tuple[int, int | bytes]]] = {}
    pos = 0
    while pos < len(data):
        key, pos = read_varint(data, pos, error)
        field_no, wire = key >> 3, key & 7
        if field_no == 0:
            raise error("invalid protobuf field number")
        value: int | bytes
        if wire == 0:
            value, pos = read_varint(data, pos, error)
        elif wire == 1:
            if pos + 8 > len(data):
                raise error("truncated fixed64 field")
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 2:
            size, pos = read_varint(data, pos, error)
            if pos + size > len(data):
                raise error("truncated length-delimited field")
            value, pos = data[pos : pos + size], pos + size
        elif wire == 5:
            if pos + 4 > len(data):
                raise error("truncated fixed32 field")
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise error(f"unsupported protobuf wire type {wire}")
        fields.setdefault(field_no, []).append((wire, value))
    return fields


def parse_context_proto(data: bytes) -> dict[int, list[tuple[int, int | bytes]]]:
    """Frame-check a TenSEALContextProto (1 params, 2 public, 3 private, 4 type)."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise CryptoError("serialised context must be non-empty bytes")
    fields = parse_proto(data, CryptoError)
    expected_wire = {1: 2, 2: 2, 3: 2, 4: 0}
    for field_no, entries in fields.items():
        if field_no not in expected_wire or any(w != expected_wire[field_no] for w, _ in entries):
            raise CryptoError("malformed CKKS context")
    if 1 not in fields:
        raise CryptoError("malformed CKKS context: no encryption parameters")
    if fields.get(4, [(0, 0)])[-1][1] != 0:
        raise CryptoError("only public-key (asymmetric) CKKS contexts are supported")
    return fields


def encode_varint(value: int) -> bytes:
    """``value`` (>= 0) as a protobuf base-128 varint."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_vector_blob(size: int, seal_ciphertext: bytes, scale: float) -> bytes:
    """Encode a TenSEAL CKKSVectorProto {1: [size], 2: [ciphertext], 3: scale}."""
    sizes = encode_varint(size)
    return b"".join(
        (
            b"\x0a",
            encode_varint(len(sizes)),
            sizes,
            b"\x12",
            encode_varint(len(seal_ciphertext)),
            seal_ciphertext,
            b"\x19",
            struct.pack("<d", scale),
        )
    )


def decode_vector_frame(blob: object, *, index: int) -> tuple[int, float]:
    """Frame-check one blob; return its declared (size, scale)."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise CiphertextError(f"ciphertext {index} is not bytes")
    try:
        fields = parse_proto(blob, CiphertextError)
    except CiphertextError as exc:
        raise CiphertextError(f"ciphertext {index} is malformed: {exc}") from None
    if set(fields) - {1, 2, 3}:
        raise CiphertextError(f"ciphertext {index} has unexpected fields")
    sizes: list[int] = []
    for wire, value in fields.get(1, []):
        if wire == 0 and isinstance(value, int):
            sizes.append(value)
        elif wire == 2 and isinstance(value, bytes):
            pos = 0
            while pos < len(value):
                size, pos = read_varint(value, pos, CiphertextError)
                sizes.append(size)
        else:
            raise CiphertextError(f"ciphertext {index} is malformed")
    cts = fields.get(2, [])
    scales = fields.get(3, [])
    if len(sizes) != 1 or len(cts) != 1 or cts[0][0] != 2:
        raise CiphertextError(f"blob {index} must hold exactly one ciphertext")
    if len(scales) != 1 or scales[0][0] != 1 or not isinstance(scales[0][1], bytes):
        raise CiphertextError(f"ciphertext {index} has no scale")
    seal_bytes = cts[0][1]
    if (
        not isinstance(seal_bytes, bytes)
        or len(seal_bytes) < _SEAL_HEADER_BYTES
        or seal_bytes[:3] != _SEAL_MAGIC
        or struct.unpack_from("<Q", seal_bytes, 8)[0] != len(seal_bytes)
    ):
        raise CiphertextError(f"ciphertext {index} has a malformed SEAL header")
    (scale,) = struct.unpack("<d", scales[0][1])
    return sizes[0], scale
