"""Tests for :mod:`privacy.payload` (length-prefixed ciphertext framing)."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy.errors import CiphertextError
from privacy.payload import _MAX_BLOBS, MAGIC, frame, sha256, unframe

SETTINGS = settings(max_examples=50, deadline=None)

blob_lists = st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=8)


def _unframe_or_ciphertext_error(payload: bytes) -> list[bytes] | None:
    try:
        return unframe(payload)
    except CiphertextError:
        return None


@SETTINGS
@given(blobs=blob_lists)
def test_round_trip(blobs: list[bytes]) -> None:
    payload = frame(blobs)
    assert payload[:4] == MAGIC
    assert struct.unpack(">I", payload[4:8])[0] == len(blobs)
    assert len(payload) == 8 + sum(8 + len(b) for b in blobs)
    assert unframe(payload) == blobs


def test_layout_is_big_endian() -> None:
    assert frame([b"ab", b"c"]) == (
        b"FCX1" + b"\x00\x00\x00\x02"
        + b"\x00" * 7 + b"\x02" + b"ab"
        + b"\x00" * 7 + b"\x01" + b"c"
    )


def test_unframe_accepts_bytearray_and_memoryview() -> None:
    payload = frame([b"xyz", b"0"])
    assert unframe(bytearray(payload)) == [b"xyz", b"0"]
    assert [bytes(b) for b in unframe(memoryview(payload))] == [b"xyz", b"0"]


@SETTINGS
@given(blobs=blob_lists, data=st.data())
def test_every_truncation_is_rejected(blobs: list[bytes], data: st.DataObject) -> None:
    payload = frame(blobs)
    cut = data.draw(st.integers(min_value=0, max_value=len(payload) - 1))
    with pytest.raises(CiphertextError):
        unframe(payload[:cut])


def test_all_prefixes_rejected_exhaustively() -> None:
    payload = frame([b"hello", b"w", b"\x00" * 17])
    for cut in range(len(payload)):
        with pytest.raises(CiphertextError):
            unframe(payload[:cut])


@pytest.mark.parametrize("magic", [b"FCX0", b"fcx1", b"\x00\x00\x00\x00", b"XCF1"])
def test_bad_magic(magic: bytes) -> None:
    payload = frame([b"abc"])
    with pytest.raises(CiphertextError):
        unframe(magic + payload[4:])


@SETTINGS
@given(blobs=blob_lists, extra=st.binary(min_size=1, max_size=32))
def test_trailing_bytes_rejected(blobs: list[bytes], extra: bytes) -> None:
    with pytest.raises(CiphertextError):
        unframe(frame(blobs) + extra)


def test_zero_count_rejected() -> None:
    with pytest.raises(CiphertextError):
        unframe(MAGIC + struct.pack(">I", 0))
    with pytest.raises(CiphertextError):
        unframe(MAGIC + struct.pack(">I", 0) + struct.pack(">Q", 1) + b"x")
    # frame() itself happily writes a zero count, which unframe() then refuses.
    with pytest.raises(CiphertextError):
        unframe(frame([]))


def test_count_above_limit_rejected() -> None:
    with pytest.raises(CiphertextError):
        unframe(MAGIC + struct.pack(">I", _MAX_BLOBS + 1) + struct.pack(">Q", 1) + b"x")
    with pytest.raises(CiphertextError):
        unframe(MAGIC + struct.pack(">I", 0xFFFFFFFF))


def test_count_larger_than_blobs_present_rejected() -> None:
    payload = bytearray(frame([b"a", b"b"]))
    payload[4:8] = struct.pack(">I", 3)
    with pytest.raises(CiphertextError):
        unframe(bytes(payload))
    payload[4:8] = struct.pack(">I", 1)  # fewer declared: the rest is trailing
    with pytest.raises(CiphertextError):
        unframe(bytes(payload))


def test_zero_length_blob_rejected() -> None:
    with pytest.raises(CiphertextError):
        unframe(MAGIC + struct.pack(">I", 1) + struct.pack(">Q", 0))
    with pytest.raises(CiphertextError):
        unframe(frame([b"a", b""]))


def test_huge_declared_length_rejected() -> None:
    payload = MAGIC + struct.pack(">I", 1) + struct.pack(">Q", 2**64 - 1) + b"abc"
    with pytest.raises(CiphertextError):
        unframe(payload)


@pytest.mark.parametrize("payload", [b"", b"F", b"FCX1", b"FCX1\x00\x00\x00"])
def test_short_payload_rejected(payload: bytes) -> None:
    with pytest.raises(CiphertextError):
        unframe(payload)


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(max_size=128))
def test_fuzz_random_bytes_only_ciphertext_error(payload: bytes) -> None:
    result = _unframe_or_ciphertext_error(payload)
    if result is not None:
        assert frame(result) == payload


@settings(max_examples=200, deadline=None)
@given(
    count=st.integers(min_value=0, max_value=2**32 - 1) | st.integers(min_value=0, max_value=4),
    body=st.binary(max_size=96),
)
def test_fuzz_magic_prefixed_bytes_only_ciphertext_error(count: int, body: bytes) -> None:
    payload = MAGIC + struct.pack(">I", count) + body
    result = _unframe_or_ciphertext_error(payload)
    if result is not None:
        assert len(result) == count
        assert all(result)
        assert frame(result) == payload


@settings(max_examples=100, deadline=None)
@given(blobs=blob_lists, data=st.data())
def test_fuzz_mutated_frames_only_ciphertext_error(
    blobs: list[bytes], data: st.DataObject
) -> None:
    payload = bytearray(frame(blobs))
    index = data.draw(st.integers(min_value=0, max_value=len(payload) - 1))
    payload[index] ^= data.draw(st.integers(min_value=1, max_value=255))
    result = _unframe_or_ciphertext_error(bytes(payload))
    if result is not None:
        # Only a flipped byte inside a blob body can still parse, as the same shape.
        assert [len(b) for b in result] == [len(b) for b in blobs]
        assert frame(result) == bytes(payload)


def test_sha256_is_raw_digest() -> None:
    assert sha256(b"abc") == hashlib.sha256(b"abc").digest()
    assert len(sha256(b"")) == 32
