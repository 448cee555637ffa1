"""The strict protobuf framing of TenSEAL blobs (privacy.ckks_wire), on its own."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from privacy import ckks_wire
from privacy.errors import CiphertextError, CryptoError

#: A minimal well-formed SEAL header: magic, header size, version bytes, u64 total size.
_SEAL_PREFIX = b"\x5e\xa1\x10\x04\x00\x00\x00\x00"


def _seal_bytes(body: bytes = b"\x00" * 16) -> bytes:
    total = len(_SEAL_PREFIX) + 8 + len(body)
    return _SEAL_PREFIX + struct.pack("<Q", total) + body


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_varint_round_trip(value: int) -> None:
    encoded = ckks_wire.encode_varint(value)
    assert ckks_wire.read_varint(encoded + b"\xff", 0, CryptoError) == (value, len(encoded))


def test_varint_rejects_truncation_and_overlength() -> None:
    with pytest.raises(CryptoError, match="truncated"):
        ckks_wire.read_varint(b"\x80\x80", 0, CryptoError)
    with pytest.raises(CiphertextError, match="too long"):
        ckks_wire.read_varint(b"\x80" * 11, 0, CiphertextError)


@given(size=st.integers(min_value=0, max_value=2**20), scale=st.floats(2.0**20, 2.0**60),
       body=st.binary(min_size=0, max_size=64))
def test_vector_blob_round_trip(size: int, scale: float, body: bytes) -> None:
    blob = ckks_wire.encode_vector_blob(size, _seal_bytes(body), scale)
    assert ckks_wire.decode_vector_frame(blob, index=3) == (size, scale)


@pytest.mark.parametrize(("blob", "message"), [
    ("not bytes", "is not bytes"),
    (b"\x07", "malformed"),                                    # wire type 7
    (b"\x22\x00", "unexpected fields"),                        # field 4
    (b"\x0a\x01\x05\x19" + struct.pack("<d", 2.0**40), "exactly one ciphertext"),
    (b"\x0a\x01\x05\x12\x10" + b"\x00" * 16 + b"\x19" + struct.pack("<d", 2.0**40),
     "malformed SEAL header"),
])
def test_vector_frame_rejections_name_the_blob(blob: object, message: str) -> None:
    with pytest.raises(CiphertextError, match=message) as info:
        ckks_wire.decode_vector_frame(blob, index=5)
    assert "5" in str(info.value)


def test_vector_frame_needs_its_scale() -> None:
    seal = _seal_bytes()
    no_scale = b"\x0a\x01\x05\x12" + ckks_wire.encode_varint(len(seal)) + seal
    with pytest.raises(CiphertextError, match="no scale"):
        ckks_wire.decode_vector_frame(no_scale, index=0)


def test_context_frame_refuses_symmetric_and_parameterless_contexts() -> None:
    with pytest.raises(CryptoError, match="non-empty"):
        ckks_wire.parse_context_proto(b"")
    with pytest.raises(CryptoError, match="no encryption parameters"):
        ckks_wire.parse_context_proto(b"\x12\x00")              # only field 2
    with pytest.raises(CryptoError, match="public-key"):
        ckks_wire.parse_context_proto(b"\x0a\x00\x20\x01")      # field 4 (type) = 1
    with pytest.raises(CryptoError, match="malformed"):
        ckks_wire.parse_context_proto(b"\x0d\x00\x00\x00\x00")  # field 1 as fixed32
    assert set(ckks_wire.parse_context_proto(b"\x0a\x00\x12\x00")) == {1, 2}
