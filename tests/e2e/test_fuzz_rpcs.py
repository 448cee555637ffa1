"""Fuzz every Coordinator RPC over real mutual-TLS gRPC against one in-process coordinator.

One module-scoped coordinator (3-member roster, plus ``org4``: a valid certificate of the
same CA that is *not* in the roster) is set up with the real key ceremony and one valid
contribution from ``org1`` in the open round ``r1``. Hypothesis then throws malformed
typed requests and raw undecodable request bodies at every RPC. After each case:

* the call ended with a status code before its deadline (nothing hangs);
* the code is one the RPC may legitimately answer, never ``UNKNOWN`` or ``INTERNAL``
  (undecodable bodies included), and the status trailer stays small (rejections clip
  the client strings they quote); regression tests below pin the six bugs the fuzzer
  found and that were fixed;
* the server still answers its health check;
* the SQLite tables and the blob directory are byte-for-byte what they were, unless the
  case was legitimately accepted, in which case exactly the expected change happened.

At the end the valid participants complete ``r1`` and the decrypted sum is right.
"""

from __future__ import annotations

import json
import sqlite3
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from coordinator.config import CoordinatorConfig
from coordinator.server import CoordinatorServer
from fedctx.provision import provision
from participant.client import CoordinatorClient, TlsFiles
from privacy import ckks, keyshare, payload
from proto.fedctx.v1 import fedctx_pb2 as pb

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

FED = "fed-test"
ROSTER = ("org1", "org2", "org3")
OUTSIDER = "org4"  # valid certificate from the federation CA, not in the roster
PEERS = (*ROSTER, OUTSIDER)
CHUNK = 16 * 1024
MAX_PAYLOAD = 1024 * 1024
LENGTH = 2100  # two ciphertexts at 2048 slots
MODEL_FP, LAYER_FP = "m" * 64, "l" * 64
CALL_TIMEOUT = 10.0
SERVICE = "fedctx.v1.Coordinator"
TABLES = ("meta", "key_announcements", "sealed_keys", "rounds", "contributions", "tasks",
          "mask_keys", "mask_shares", "revealed_shares")
TASK_V, TASK_C = 2000, 50  # a cached task: 2000 vector values + 50 coefficients
SC = grpc.StatusCode
NEVER = frozenset({SC.INTERNAL, SC.UNKNOWN, SC.DEADLINE_EXCEEDED, SC.UNAVAILABLE,
                   SC.CANCELLED, SC.DATA_LOSS})
# Rejection messages quoting unbounded client strings once made the status trailer exceed
# the client's 8 KiB metadata limit (RESOURCE_EXHAUSTED instead of the real code).
OVERSIZED_TRAILER = "received metadata size exceeds"

FUZZ = settings(deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=list(HealthCheck))
CASES: Counter[str] = Counter()
ACCEPTED: Counter[str] = Counter()


# --------------------------------------------------------------------------- fixture
@dataclass
class Fed:
    """Everything the fuzz tests share."""

    server: CoordinatorServer
    pki: Any
    state_dir: Path
    clients: dict[str, CoordinatorClient]
    health: health_pb2_grpc.HealthStub
    secret: Any
    public: Any
    public_bytes: bytes
    fingerprint: str
    values: dict[str, np.ndarray]
    announcements: dict[str, pb.AnnounceKeyRequest]
    r1_org1: bytes
    r1_org1_blobs: list[bytes]
    template: bytes  # valid framed payload of LENGTH values (a fuzz base; kept out of r1)
    short_template: bytes  # valid framed payload of 100 values (one ciphertext)
    foreign: bytes  # valid-looking payload of another key set with the same parameters
    foreign_public: bytes
    secret_bytes: bytes
    task_values: np.ndarray
    task_payload: bytes  # stored by org1 as task "t1"
    task_template: bytes  # valid task payload (a fuzz base)
    baseline: tuple[Any, ...] = ()

    def __repr__(self) -> str:  # keep Hypothesis' failure reports readable
        return f"Fed(port={self.server.port})"


def _client(pki, pid: str, port: int) -> CoordinatorClient:  # type: ignore[no-untyped-def]
    cert, key = pki.participants[pid]
    return CoordinatorClient(f"127.0.0.1:{port}", TlsFiles(cert, key, pki.ca_cert),
                             timeout_s=CALL_TIMEOUT, stream_timeout_s=CALL_TIMEOUT, retries=0)


def _raw_channel(fed: Fed, pid: str, **options: int) -> grpc.Channel:
    cert, key = fed.pki.participants[pid]
    credentials = grpc.ssl_channel_credentials(
        root_certificates=fed.pki.ca_cert.read_bytes(), private_key=key.read_bytes(),
        certificate_chain=cert.read_bytes())
    return grpc.secure_channel(f"127.0.0.1:{fed.server.port}", credentials,
                               options=list(options.items()))


def _header(fed: Fed, length: int, **changes: Any) -> pb.ContributionHeader:
    header = pb.ContributionHeader(
        federation_id=FED, round_id="r1", model_fingerprint=MODEL_FP,
        layer_map_fingerprint=LAYER_FP,
        ckks_context_fingerprint=fed.fingerprint, vector_length=length, kind="context_vector")
    for key, value in changes.items():
        setattr(header, key, value)
    return header


def _ceremony(pki, port: int):  # type: ignore[no-untyped-def]
    """The real key ceremony for org1..org3 (org1 is the keyholder)."""
    clients = {pid: _client(pki, pid, port) for pid in PEERS}
    announcements, privates = {}, {}
    for pid in ROSTER:
        private, public = keyshare.generate_x25519_keypair()
        privates[pid] = private
        request = pb.AnnounceKeyRequest(
            federation_id=FED, x25519_public=public,
            signature=keyshare.sign_key_announcement(
                federation_id=FED, participant_id=pid, x25519_public=public,
                signing_key_pem=pki.participants[pid][1].read_bytes()),
            certificate_pem=pki.participants[pid][0].read_text())
        clients[pid].announce_key(request)
        announcements[pid] = request
    secret = ckks.create_secret_context(ckks.CkksParams())
    public_bytes = ckks.serialize_public_context(secret)
    fingerprint = ckks.context_fingerprint(public_bytes)
    secret_bytes = ckks.serialize_secret_context(secret)
    sealed = [
        pb.SealedKey(recipient_id=a.participant_id, sealed_secret_context=keyshare.seal(
            secret_bytes, recipient_x25519_public=a.x25519_public, federation_id=FED,
            recipient_id=a.participant_id, public_context_fingerprint=fingerprint,
            sender_signing_key_pem=pki.participants["org1"][1].read_bytes()))
        for a in clients["org1"].key_announcements() if a.participant_id != "org1"
    ]
    assert clients["org1"].publish_keys(pb.PublishKeysRequest(
        federation_id=FED, public_context=public_bytes,
        ckks_params_fingerprint=ckks.CkksParams().fingerprint(), model_fingerprint=MODEL_FP,
        layer_map_fingerprint=LAYER_FP, sealed_keys=sealed)) == fingerprint
    for pid in ("org2", "org3"):  # the relay works: every member opens its own key
        response = clients[pid].fetch_sealed_key()
        opened = keyshare.open_sealed(
            response.sealed_secret_context, recipient_x25519_private=privates[pid],
            federation_id=FED, recipient_id=pid,
            public_context_fingerprint=response.ckks_context_fingerprint,
            sender_certificate_pem=response.keyholder_certificate_pem.encode(),
            ca_certificate_pem=pki.ca_cert.read_bytes(), sender_id="org1")
        assert ckks.context_fingerprint(
            ckks.serialize_public_context(ckks.load_secret_context(opened))) == fingerprint
    return clients, announcements, secret, public_bytes, fingerprint, secret_bytes


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    root = tmp_path_factory.mktemp("fuzz")
    pki = provision(root / "pki", list(PEERS))
    state_dir = root / "coord"
    config = CoordinatorConfig(
        federation_id=FED, roster=ROSTER, keyholder_id="org1", state_dir=state_dir,
        tls_cert=pki.coordinator_cert, tls_key=pki.coordinator_key, tls_ca=pki.ca_cert,
        chunk_bytes=CHUNK, max_payload_bytes=MAX_PAYLOAD, round_timeout_s=3600.0,
    )
    server = CoordinatorServer(config).start()
    clients: dict[str, CoordinatorClient] = {}
    try:
        clients, announcements, secret, public_bytes, fingerprint, secret_bytes = _ceremony(
            pki, server.port)
        rng = np.random.default_rng(7)
        values = {pid: rng.normal(size=LENGTH) for pid in ROSTER}
        r1_blobs = ckks.encrypt_vector(secret, values["org1"])
        first = clients["org1"].submit(_header_for(fingerprint, LENGTH), r1_blobs,
                                       chunk_bytes=CHUNK)
        assert (first.contributions, first.state) == (1, pb.ROUND_STATE_OPEN)
        foreign_ctx = ckks.create_secret_context(ckks.CkksParams())
        task_values = rng.normal(size=TASK_V + TASK_C)
        task_blobs = ckks.encrypt_vector(secret, task_values)
        assert clients["org1"].put_task(_task_header_for(fingerprint, "t1"), task_blobs,
                                        chunk_bytes=CHUNK) is False
        f = Fed(
            server=server, pki=pki, state_dir=state_dir, clients=clients,
            health=health_pb2_grpc.HealthStub(clients["org1"].channel), secret=secret,
            public=ckks.load_public_context(public_bytes), public_bytes=public_bytes,
            fingerprint=fingerprint, values=values, announcements=announcements,
            r1_org1=payload.frame(r1_blobs), r1_org1_blobs=r1_blobs,
            template=payload.frame(ckks.encrypt_vector(secret, rng.normal(size=LENGTH))),
            short_template=payload.frame(ckks.encrypt_vector(secret, rng.normal(size=100))),
            foreign=payload.frame(ckks.encrypt_vector(foreign_ctx, rng.normal(size=LENGTH))),
            foreign_public=ckks.serialize_public_context(foreign_ctx),
            secret_bytes=secret_bytes, task_values=task_values,
            task_payload=payload.frame(task_blobs),
            task_template=payload.frame(
                ckks.encrypt_vector(secret, rng.normal(size=TASK_V + TASK_C))),
        )
        _fill_valid_bodies(fingerprint)
        f.baseline = snapshot(f)
        yield f
    finally:
        for c in clients.values():
            c.close()
        server.stop(grace_s=0)
        print(f"\n[fuzz] cases per RPC: {dict(sorted(CASES.items()))} total={sum(CASES.values())}")
        print(f"[fuzz] legitimately accepted: {dict(ACCEPTED)}")


def _header_for(fingerprint: str, length: int, round_id: str = "r1") -> pb.ContributionHeader:
    return pb.ContributionHeader(
        federation_id=FED, round_id=round_id, model_fingerprint=MODEL_FP,
        layer_map_fingerprint=LAYER_FP, ckks_context_fingerprint=fingerprint,
        vector_length=length, kind="context_vector")


def _task_header_for(fingerprint: str, task_id: str) -> pb.TaskHeader:
    return pb.TaskHeader(
        task_id=task_id, task_name="sst2", model_fingerprint=MODEL_FP,
        layer_map_fingerprint=LAYER_FP, ckks_context_fingerprint=fingerprint,
        vector_length=TASK_V, coefficient_count=TASK_C, metadata_json='{"epsilon": 1.5}')


# --------------------------------------------------------------------------- invariants
def snapshot(fed: Fed) -> tuple[Any, ...]:
    """Every row of every table (read through a separate read-only connection) + blobs."""
    db = sqlite3.connect(f"file:{fed.state_dir / 'coordinator.sqlite3'}?mode=ro", uri=True)
    try:
        tables = tuple(
            tuple(db.execute(f"SELECT * FROM {name} ORDER BY rowid").fetchall())  # noqa: S608
            for name in TABLES
        )
    finally:
        db.close()
    blob_dir = fed.state_dir / "blobs"
    blobs = tuple(sorted((p.name, p.stat().st_size) for p in blob_dir.iterdir()))
    return (*tables, blobs)


def _table(snap: tuple[Any, ...], name: str) -> tuple[Any, ...]:
    return snap[TABLES.index(name)]


def outcome(fn: Callable[[], Any]) -> tuple[grpc.StatusCode, str, Any]:
    try:
        return SC.OK, "", fn()
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or "", None  # type: ignore[attr-defined]


def assert_healthy(fed: Fed) -> None:
    response = fed.health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def check(fed: Fed, rpc: str, code: grpc.StatusCode, details: str,
          allowed: Iterable[grpc.StatusCode]) -> None:
    """Status invariants plus health; the caller checks state."""
    CASES[rpc] += 1
    assert code not in NEVER, f"{rpc}: {code.name} {details!r}"
    assert code in set(allowed), f"{rpc}: unexpected {code.name} {details!r}"
    assert OVERSIZED_TRAILER not in details, f"{rpc}: status trailer too large"
    assert_healthy(fed)


def assert_unchanged(fed: Fed, what: str) -> None:
    now = snapshot(fed)
    assert now == fed.baseline, f"{what}: coordinator state changed"


# --------------------------------------------------------------------------- strategies
_chars = st.characters(exclude_categories=("Cs",))
big_strings = st.builds(lambda n, c: c * n, st.integers(256, 1 << 20),
                        st.sampled_from("a0/\n\u00e9\u2603"))
texts = st.one_of(
    st.text(_chars, max_size=40),
    st.sampled_from(["", "r1", "r1\n", " r1", "R1", "r1\x00", "fed-test", "fed-test\n", "..",
                     "../../etc/passwd", "a" * 128, "a" * 129, "x:y.z-_", "\u00e9t\u00e9",
                     "' OR 1=1 --", "r1; DROP TABLE rounds", MODEL_FP, LAYER_FP, "0" * 64]),
    big_strings,
)
u32 = st.one_of(st.integers(0, 2**32 - 1),
                st.sampled_from([0, 1, 2, 3, 2047, 2048, 2049, 2**31, 2**32 - 1]))
u64 = st.one_of(st.integers(0, 2**64 - 1),
                st.sampled_from([0, 1, 2, 99, 100, 2047, 2048, 2100, 4096, 2**31, 2**32,
                                 2**43, 2**63 - 1, 2**63, 2**64 - 1, MAX_PAYLOAD,
                                 MAX_PAYLOAD + 1]))
binaries = st.one_of(
    st.binary(max_size=80),
    st.sampled_from([b"", b"\x00" * 32, b"\xff" * 32, b"\x00" * 31, b"\x00" * 33]),
    st.builds(lambda n, b: bytes([b]) * n, st.integers(100, 300_000), st.integers(0, 255)),
)
peers = st.sampled_from(["org1", "org2", "org2", "org3", "org3", OUTSIDER])


def mutate(data: bytes, draw: Callable[[st.SearchStrategy[Any]], Any]) -> tuple[str, bytes]:
    """One random corruption of a (framed) payload."""
    op = draw(st.sampled_from([
        "none", "flip", "flip", "flip_head", "truncate", "extend", "splice", "zero_range",
        "count", "blob_length", "drop_ct", "dup_ct", "swap_ct", "empty_ct", "prefix",
    ]))
    buf = bytearray(data)
    n = len(buf)
    if op == "none" or n == 0:
        return "none", data
    if op in ("flip", "flip_head"):
        hi = n - 1 if op == "flip" else min(n - 1, 200)
        for pos in draw(st.lists(st.integers(0, hi), min_size=1, max_size=6)):
            buf[pos] ^= 1 << draw(st.integers(0, 7))
    elif op == "truncate":
        buf = buf[: draw(st.integers(0, n - 1))]
    elif op == "extend":
        buf += draw(st.binary(min_size=1, max_size=64))
    elif op == "splice":
        start = draw(st.integers(0, n - 1))
        buf[start : start + draw(st.integers(1, 64))] = draw(st.binary(max_size=64))
    elif op == "zero_range":
        start = draw(st.integers(0, n - 1))
        end = min(n, start + draw(st.integers(1, 4096)))
        buf[start:end] = bytes(end - start)
    elif op == "count" and n >= 8:
        buf[4:8] = struct.pack(">I", draw(u32))
    elif op == "blob_length" and n >= 16:
        buf[8:16] = struct.pack(">Q", draw(u64))
    elif op == "prefix":
        buf = bytearray(draw(st.binary(max_size=16))) + buf
    else:
        try:
            blobs = payload.unframe(data)
        except Exception:  # noqa: BLE001 - not framed: fall back to a bit flip
            buf[draw(st.integers(0, n - 1))] ^= 0x80
            return op + "(flip)", bytes(buf)
        if op == "drop_ct" and len(blobs) > 1:
            blobs = blobs[1:]
        elif op == "dup_ct":
            blobs = [*blobs, blobs[-1]]
        elif op == "swap_ct":
            blobs = blobs[::-1]
        elif op == "empty_ct":
            blobs = [*blobs[:-1], b""]
        return op, _frame_unchecked(blobs)
    return op, bytes(buf)


def _frame_unchecked(blobs: list[bytes]) -> bytes:
    parts = [payload.MAGIC, struct.pack(">I", len(blobs))]
    for blob in blobs:
        parts += [struct.pack(">Q", len(blob)), blob]
    return b"".join(parts)


def would_validate(fed: Fed, data: bytes, vector_length: int) -> bool:
    """Test-side oracle: would these bytes pass the coordinator's payload checks?"""
    try:
        blobs = payload.unframe(data)
        ckks.validate_ciphertexts(fed.public, blobs, expected_length=int(vector_length))
    except Exception:  # noqa: BLE001 - any failure means "would be rejected"
        return False
    return True


# --------------------------------------------------------------------------- SubmitContribution
HEADER_FIELDS = ("federation_id", "round_id", "model_fingerprint", "layer_map_fingerprint",
                 "ckks_context_fingerprint", "vector_length", "num_ciphertexts",
                 "payload_bytes", "payload_sha256", "kind")
PLANS = ("normal", "normal", "normal", "normal", "no_header", "two_headers", "header_last",
         "header_only", "empty_stream", "unset_part", "oversized_chunk", "small_chunks",
         "extra_bytes", "partial")


def _random_header_value(name: str, data: bytes, fed: Fed, draw: Any) -> Any:
    if name in ("vector_length", "payload_bytes"):
        return draw(st.one_of(u64, st.sampled_from([len(data) + 1, max(0, len(data) - 1)])))
    if name == "num_ciphertexts":
        return draw(u32)
    if name == "payload_sha256":
        return draw(st.one_of(binaries, st.sampled_from([
            payload.sha256(fed.template), payload.sha256(fed.r1_org1), payload.sha256(b""),
            payload.sha256(data)[:31], payload.sha256(data) + b"\x00"])))
    if name == "kind":
        return draw(st.one_of(texts, st.sampled_from(
            ["context_vector", "coefficient_update", "adapter_update", "vector_sum",
             "class_statistics", "Context_Vector", "context_vector "])))
    if name == "ckks_context_fingerprint":
        return draw(st.one_of(texts, st.just(ckks.context_fingerprint(fed.foreign_public)),
                              st.just(fed.fingerprint.upper())))
    return draw(texts)


@settings(FUZZ, max_examples=1300)
@given(data=st.data())
def test_fuzz_submit_contribution(fed: Fed, data: st.DataObject) -> None:
    draw = data.draw
    peer = draw(peers)
    round_kind = draw(st.sampled_from(["r1", "r1", "fresh", "fresh", "random"]))
    round_id = {"r1": "r1", "random": None}.get(round_kind) or "fz-" + draw(
        st.text("abcdef0123", min_size=1, max_size=4))
    if round_id is None:
        round_id = draw(texts)
    base_name = draw(st.sampled_from(["template", "template", "short", "own_r1", "foreign",
                                      "random", "empty"]))
    base = {"template": fed.template, "short": fed.short_template, "own_r1": fed.r1_org1,
            "foreign": fed.foreign, "empty": b""}.get(base_name)
    if base is None:
        base = draw(st.binary(max_size=2048))
    length = 100 if base_name == "short" else LENGTH
    op, body = mutate(base, draw)
    header = _header(fed, length, round_id=round_id, num_ciphertexts=-(-length // 2048),
                     payload_bytes=len(body), payload_sha256=payload.sha256(body))
    broken = draw(st.lists(st.sampled_from(HEADER_FIELDS), unique=True,
                           max_size=draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3, 10]))))
    for name in broken:
        setattr(header, name, _random_header_value(name, body, fed, draw))
    # Never let a fuzz case become org2's or org3's real contribution to r1: the last test
    # completes r1 with their genuine vectors. Such a case is turned into a digest mismatch.
    guarded = False
    if (header.round_id == "r1" and peer in ("org2", "org3")
            and header.payload_sha256 == payload.sha256(body)
            and would_validate(fed, body, header.vector_length)):
        header.payload_sha256 = payload.sha256(body + b"guard")
        guarded = True
    plan = draw(st.sampled_from(PLANS))
    step = draw(st.sampled_from([CHUNK, CHUNK, CHUNK // 2, 1000, 4093]))
    messages = _stream(header, body, plan, step, draw)
    note(f"peer={peer} round={round_id!r} base={base_name} op={op} broken={broken} "
         f"plan={plan} step={step} guarded={guarded} messages={len(messages)}")

    stub = fed.clients[peer].stub
    code, details, response = outcome(
        lambda: stub.SubmitContribution(iter(messages), timeout=CALL_TIMEOUT))
    check(fed, "SubmitContribution", code, details, {
        SC.OK, SC.INVALID_ARGUMENT, SC.PERMISSION_DENIED, SC.ALREADY_EXISTS,
        SC.FAILED_PRECONDITION, SC.RESOURCE_EXHAUSTED})
    if code != SC.OK:
        assert_unchanged(fed, f"rejected SubmitContribution ({code.name}: {details})")
        return
    _account_accepted_submit(fed, peer, header, messages, response, op)


def _stream(header: Any, body: bytes, plan: str, step: int, draw: Any,
            cls: Any = pb.SubmitContributionRequest) -> list[Any]:
    """Header-then-chunks messages of ``cls``, shaped by ``plan``."""
    if plan == "small_chunks" and len(body) > 8192:
        plan = "normal"
    if plan == "small_chunks":
        step = draw(st.integers(1, 97))
    if plan == "oversized_chunk":
        step = draw(st.integers(CHUNK + 1, 3 * CHUNK))
    chunks = [cls(chunk=body[i : i + step])
              for i in range(0, len(body), step)]
    head = cls(header=header)
    if plan == "no_header":
        return chunks
    if plan == "two_headers":
        return [head, head, *chunks]
    if plan == "header_last":
        return [head, *chunks, head]
    if plan == "header_only":
        return [head]
    if plan == "empty_stream":
        return []
    if plan == "unset_part":
        at = draw(st.integers(0, len(chunks) + 1))
        items = [head, *chunks]
        items.insert(min(at, len(items)), cls())
        return items
    if plan == "extra_bytes":
        return [head, *chunks, cls(chunk=draw(st.binary(min_size=1, max_size=64)))]
    if plan == "partial" and chunks:
        return [head, *chunks[: draw(st.integers(0, len(chunks) - 1))]]
    if draw(st.booleans()):  # sprinkle empty chunks: harmless, must not change anything
        chunks.insert(draw(st.integers(0, len(chunks))), cls(chunk=b""))
    return [head, *chunks]


def _account_accepted_submit(fed: Fed, peer: str, header: pb.ContributionHeader,
                             messages: list[pb.SubmitContributionRequest], response: Any,
                             op: str) -> None:
    """A case that was legitimately accepted: check exactly the expected change happened."""
    before, after = fed.baseline, snapshot(fed)
    sent = b"".join(m.chunk for m in messages[1:])
    assert peer in ROSTER
    assert response.round_id == header.round_id
    assert response.payload_sha256 == header.payload_sha256 == payload.sha256(sent)
    assert len(sent) == header.payload_bytes
    digest = header.payload_sha256.hex()
    if response.duplicate:
        ACCEPTED["SubmitContribution(duplicate)"] += 1
        assert after == before, "a duplicate upload changed state"
        return
    ACCEPTED[f"SubmitContribution[{op}]"] += 1
    assert header.round_id != "r1" or peer == "org1", "fuzz became a real r1 contribution"
    assert would_validate(fed, sent, header.vector_length), "accepted an invalid payload"
    for name in ("meta", "key_announcements", "sealed_keys"):
        assert _table(after, name) == _table(before, name)
    others = lambda rows: [r for r in rows if r[0] != header.round_id]  # noqa: E731
    assert others(_table(after, "rounds")) == others(_table(before, "rounds"))
    assert others(_table(after, "contributions")) == others(_table(before, "contributions"))
    new_rows = set(_table(after, "contributions")) - set(_table(before, "contributions"))
    assert [(r[0], r[1], r[2], r[3]) for r in new_rows] == [
        (header.round_id, peer, digest, len(sent))]
    (round_row,) = [r for r in _table(after, "rounds") if r[0] == header.round_id]
    assert round_row[1] in ("open", "closed")
    assert (round_row[2], round_row[3]) == (header.kind, header.vector_length)
    new_blobs = {n for n, _ in after[-1]} - {n for n, _ in before[-1]}
    assert set(before[-1]) <= set(after[-1])
    assert new_blobs <= {digest, round_row[8]}, new_blobs
    assert not any(n.startswith(".") for n, _ in after[-1]), "temporary blob left behind"
    fed.baseline = after


# --------------------------------------------------------------------------- PutTask
TASK_FIELDS = ("task_id", "task_name", "model_fingerprint", "layer_map_fingerprint",
               "ckks_context_fingerprint", "vector_length", "coefficient_count",
               "num_ciphertexts", "payload_bytes", "payload_sha256", "metadata_json",
               "stored_by", "stored_at_unix_s")
json_texts = st.one_of(
    texts,
    st.sampled_from(["", "{}", "[]", "null", "1", '"x"', "{", '{"a": NaN}', "[1, 2", "\x00",
                     '"\\ud800"', "1e999", "-0"]),
    st.builds(lambda n, c: c * n, st.sampled_from([10, 900, 1100, 5000, 100_000]),
              st.sampled_from(["[", "{\"a\":", "1", " "])),
    st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=8),
                 lambda inner: st.lists(inner, max_size=3)
                 | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                 max_leaves=8).map(json.dumps),
)


def _random_task_value(name: str, body: bytes, fed: Fed, draw: Any) -> Any:
    if name in ("vector_length", "coefficient_count", "payload_bytes"):
        return draw(st.one_of(u64, st.sampled_from([len(body) + 1, max(0, len(body) - 1)])))
    if name == "num_ciphertexts":
        return draw(u32)
    if name == "stored_at_unix_s":
        return draw(st.floats())
    if name == "metadata_json":
        return draw(json_texts)
    if name in ("payload_sha256",):
        return draw(st.one_of(binaries, st.just(payload.sha256(fed.task_payload))))
    if name == "task_id":
        return draw(st.one_of(texts, st.just("t1")))
    return _random_header_value(name, body, fed, draw) if name in HEADER_FIELDS else draw(texts)


@settings(FUZZ, max_examples=600)
@given(data=st.data())
def test_fuzz_put_task(fed: Fed, data: st.DataObject) -> None:
    draw = data.draw
    peer = draw(peers)
    task_id = draw(st.sampled_from(["t1", "fresh", "fresh", "random"]))
    if task_id == "fresh":
        task_id = "ft-" + draw(st.text("abcdef0123", min_size=1, max_size=4))
    elif task_id == "random":
        task_id = draw(texts)
    base_name = draw(st.sampled_from(["template", "template", "t1", "contribution", "foreign",
                                      "random", "empty"]))
    base = {"template": fed.task_template, "t1": fed.task_payload, "contribution": fed.template,
            "foreign": fed.foreign, "empty": b""}.get(base_name)
    if base is None:
        base = draw(st.binary(max_size=2048))
    op, body = mutate(base, draw)
    header = _task_header_for(fed.fingerprint, task_id)
    header.num_ciphertexts, header.payload_bytes = 2, len(body)
    header.payload_sha256 = payload.sha256(body)
    broken = draw(st.lists(st.sampled_from(TASK_FIELDS), unique=True,
                           max_size=draw(st.sampled_from([0, 0, 1, 1, 2, 3, 13]))))
    for name in broken:
        setattr(header, name, _random_task_value(name, body, fed, draw))
    plan = draw(st.sampled_from(PLANS))
    step = draw(st.sampled_from([CHUNK, CHUNK // 2, 1000]))
    messages = _stream(header, body, plan, step, draw, pb.PutTaskRequest)
    note(f"peer={peer} task={task_id!r} base={base_name} op={op} broken={broken} plan={plan}")
    code, details, response = outcome(
        lambda: fed.clients[peer].stub.PutTask(iter(messages), timeout=CALL_TIMEOUT))
    check(fed, "PutTask", code, details, {
        SC.OK, SC.INVALID_ARGUMENT, SC.PERMISSION_DENIED, SC.ALREADY_EXISTS,
        SC.RESOURCE_EXHAUSTED})
    if code != SC.OK:
        assert_unchanged(fed, f"rejected PutTask ({code.name}: {details})")
        return
    before, after = fed.baseline, snapshot(fed)
    sent = b"".join(m.chunk for m in messages[1:])
    assert peer in ROSTER and response.task_id == header.task_id
    assert payload.sha256(sent) == header.payload_sha256
    assert would_validate(fed, sent, header.vector_length + header.coefficient_count)
    if response.duplicate:
        ACCEPTED["PutTask(duplicate)"] += 1
        assert after == before
        return
    ACCEPTED["PutTask"] += 1
    for name in TABLES:
        if name != "tasks":
            assert _table(after, name) == _table(before, name)
    new_rows = set(_table(after, "tasks")) - set(_table(before, "tasks"))
    assert set(_table(before, "tasks")) <= set(_table(after, "tasks"))
    ((tid, header_json, blob, stored_by, _),) = new_rows
    assert (tid, blob, stored_by) == (header.task_id, header.payload_sha256.hex(), peer)
    stored = json.loads(header_json)
    assert stored["stored_by"] == peer  # never the client's claim
    assert {n for n, _ in after[-1]} - {n for n, _ in before[-1]} <= {blob}
    fed.baseline = after


# --------------------------------------------------------------------------- key RPCs
def _mangle_pem(fed: Fed, pem: str, draw: Any) -> str:
    how = draw(st.sampled_from(["no_ws", "extra_ws", "crlf", "fs_chars", "truncate", "flip",
                                "double", "header_only", "other_peer"]))
    if how == "no_ws":
        return "".join(pem.split())
    if how == "extra_ws":
        at = draw(st.integers(0, len(pem)))
        return pem[:at] + draw(st.sampled_from([" ", "\t", "\n", "  \n "])) + pem[at:]
    if how == "crlf":
        return pem.replace("\n", "\r\n")
    if how == "fs_chars":  # str.split() treats \x1c..\x1f as whitespace too
        at = draw(st.integers(0, len(pem)))
        return pem[:at] + "\x1c\x1f" + pem[at:]
    if how == "truncate":
        return pem[: draw(st.integers(0, len(pem) - 1))]
    if how == "flip":
        at = draw(st.integers(0, len(pem) - 1))
        return pem[:at] + chr((ord(pem[at]) ^ 1) or 65) + pem[at + 1 :]
    if how == "double":
        return pem + pem
    if how == "header_only":
        return "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"
    return draw(st.sampled_from([p.read_text() for p, _ in fed.pki.participants.values()]))


@settings(FUZZ, max_examples=450)
@given(data=st.data())
def test_fuzz_announce_key(fed: Fed, data: st.DataObject) -> None:
    draw = data.draw
    peer = draw(peers)
    source = fed.announcements[draw(st.sampled_from(ROSTER))]
    request = pb.AnnounceKeyRequest()
    request.CopyFrom(source)
    for name in draw(st.lists(st.sampled_from(
            ["federation_id", "x25519_public", "signature", "certificate_pem"]), unique=True)):
        if name == "federation_id":
            request.federation_id = draw(texts)
        elif name == "x25519_public":
            request.x25519_public = draw(st.one_of(
                binaries, st.binary(min_size=32, max_size=32),
                st.just(keyshare.generate_x25519_keypair()[1])))
        elif name == "signature":
            sig = source.signature
            request.signature = draw(st.one_of(
                binaries, st.just(sig[:-1]), st.just(sig + b"\x00"),
                st.integers(0, len(sig) - 1).map(
                    lambda i, s=sig: s[:i] + bytes([s[i] ^ 1]) + s[i + 1 :])))
        else:
            request.certificate_pem = (
                draw(texts) if draw(st.booleans())
                else _mangle_pem(fed, source.certificate_pem, draw))
    note(f"peer={peer} request={str(request)[:300]!r}")
    code, details, _ = outcome(
        lambda: fed.clients[peer].stub.AnnounceKey(request, timeout=CALL_TIMEOUT))
    check(fed, "AnnounceKey", code, details,
          {SC.OK, SC.INVALID_ARGUMENT, SC.PERMISSION_DENIED, SC.ALREADY_EXISTS})
    if code != SC.OK:
        assert_unchanged(fed, f"rejected AnnounceKey ({code.name}: {details})")
        return
    # Legitimate: a member re-announces its own, already announced, key (idempotent).
    ACCEPTED["AnnounceKey"] += 1
    before, after = fed.baseline, snapshot(fed)
    assert request.federation_id == FED and peer in ROSTER
    assert request.x25519_public == fed.announcements[peer].x25519_public
    for name in ("meta", "sealed_keys", "rounds", "contributions"):
        assert _table(after, name) == _table(before, name)
    assert after[-1] == before[-1]
    rows_before = {r[0]: r for r in _table(before, "key_announcements")}
    rows_after = {r[0]: r for r in _table(after, "key_announcements")}
    assert set(rows_before) == set(rows_after)
    for pid, row in rows_after.items():
        if pid != peer:
            assert row == rows_before[pid]
        else:
            assert row[1] == rows_before[pid][1]  # the sealed-to key never changes
            assert "".join(row[3].split()) == "".join(rows_before[pid][3].split())
    fed.baseline = after


@settings(FUZZ, max_examples=250)
@given(data=st.data())
def test_fuzz_publish_keys(fed: Fed, data: st.DataObject) -> None:
    draw = data.draw
    peer = draw(st.sampled_from(["org1", "org1", "org1", "org2", OUTSIDER]))
    context_kind = draw(st.sampled_from(
        ["ours", "ours", "mutated", "mutated", "foreign", "secret", "random", "empty"]))
    context = {"ours": fed.public_bytes, "foreign": fed.foreign_public, "empty": b"",
               "secret": fed.secret_bytes}.get(context_kind)
    if context_kind == "mutated":
        op, context = mutate(fed.public_bytes, draw)
        context_kind += f"({op})"
    elif context_kind == "random":
        context = draw(binaries)
    recipients = draw(st.one_of(
        st.just(["org2", "org3"]),
        st.lists(st.one_of(st.sampled_from(PEERS), texts), max_size=5)))
    request = pb.PublishKeysRequest(
        federation_id=draw(st.one_of(st.just(FED), texts)), public_context=context,
        ckks_params_fingerprint=draw(st.one_of(st.just(ckks.CkksParams().fingerprint()), texts)),
        model_fingerprint=draw(st.one_of(st.just(MODEL_FP), texts)),
        layer_map_fingerprint=draw(st.one_of(st.just(LAYER_FP), texts)),
        sealed_keys=[pb.SealedKey(recipient_id=r, sealed_secret_context=draw(binaries))
                     for r in recipients])
    note(f"peer={peer} context={context_kind} recipients={recipients}")
    code, details, response = outcome(
        lambda: fed.clients[peer].stub.PublishKeys(request, timeout=CALL_TIMEOUT))
    check(fed, "PublishKeys", code, details,
          {SC.OK, SC.INVALID_ARGUMENT, SC.PERMISSION_DENIED, SC.ALREADY_EXISTS})
    if context_kind == "secret":
        assert code != SC.OK, "a secret context was accepted as the public one"
    if code == SC.OK:  # idempotent re-publication of the same key set: nothing changes
        ACCEPTED["PublishKeys(idempotent)"] += 1
        assert peer == "org1" and request.federation_id == FED
        assert response.ckks_context_fingerprint == fed.fingerprint
        assert ckks.context_fingerprint(context) == fed.fingerprint
    assert_unchanged(fed, f"PublishKeys ({code.name}: {details})")


@settings(FUZZ, max_examples=20)
@given(peer=st.sampled_from(PEERS))
def test_fuzz_argumentless_rpcs(fed: Fed, peer: str) -> None:
    """GetFederation, ListKeyAnnouncements, FetchSealedKey for members and an outsider."""
    stub = fed.clients[peer].stub
    code, details, info = outcome(
        lambda: stub.GetFederation(pb.GetFederationRequest(), timeout=CALL_TIMEOUT))
    check(fed, "GetFederation", code, details, {SC.OK})  # public to any authenticated peer
    assert info.ckks_context_fingerprint == fed.fingerprint
    assert tuple(info.roster) == ROSTER and info.chunk_bytes == CHUNK
    code, details, listed = outcome(lambda: stub.ListKeyAnnouncements(
        pb.ListKeyAnnouncementsRequest(), timeout=CALL_TIMEOUT))
    check(fed, "ListKeyAnnouncements", code, details, {SC.OK, SC.PERMISSION_DENIED})
    assert (code == SC.OK) == (peer in ROSTER)
    if listed is not None:
        assert [a.participant_id for a in listed.announcements] == list(ROSTER)
    code, details, sealed = outcome(
        lambda: stub.FetchSealedKey(pb.FetchSealedKeyRequest(), timeout=CALL_TIMEOUT))
    check(fed, "FetchSealedKey", code, details, {SC.OK, SC.PERMISSION_DENIED, SC.NOT_FOUND})
    assert code == {"org1": SC.NOT_FOUND, OUTSIDER: SC.PERMISSION_DENIED}.get(peer, SC.OK)
    if sealed is not None:
        assert sealed.keyholder_id == "org1" and sealed.ckks_context_fingerprint == fed.fingerprint
    code, details, tasks = outcome(
        lambda: stub.ListTasks(pb.ListTasksRequest(), timeout=CALL_TIMEOUT))
    check(fed, "ListTasks", code, details, {SC.OK, SC.PERMISSION_DENIED})
    assert (code == SC.OK) == (peer in ROSTER)
    if tasks is not None:
        assert "t1" in [t.task_id for t in tasks.tasks]
    assert_unchanged(fed, "argument-less RPCs")


round_ids = st.one_of(texts, st.just("r1"), st.text("abcdef0123", min_size=1, max_size=4).map(
    lambda s: "fz-" + s))


@settings(FUZZ, max_examples=450)
@given(peer=peers, round_id=round_ids)
def test_fuzz_get_round(fed: Fed, peer: str, round_id: str) -> None:
    stub = fed.clients[peer].stub
    code, details, status = outcome(
        lambda: stub.GetRound(pb.GetRoundRequest(round_id=round_id), timeout=CALL_TIMEOUT))
    check(fed, "GetRound", code, details, {SC.OK, SC.PERMISSION_DENIED})
    assert (code == SC.OK) == (peer in ROSTER)
    if status is not None:
        assert status.round_id == round_id
        if round_id == "r1":
            assert status.state == pb.ROUND_STATE_OPEN and status.contributions == 1
            assert status.contributed == (peer == "org1")
    assert_unchanged(fed, "GetRound")


@settings(FUZZ, max_examples=450)
@given(peer=peers, round_id=round_ids)
def test_fuzz_download_aggregate(fed: Fed, peer: str, round_id: str) -> None:
    stub = fed.clients[peer].stub

    def download() -> list[pb.DownloadAggregateResponse]:
        return list(stub.DownloadAggregate(pb.DownloadAggregateRequest(round_id=round_id),
                                           timeout=CALL_TIMEOUT))

    code, details, messages = outcome(download)
    check(fed, "DownloadAggregate", code, details,
          {SC.OK, SC.PERMISSION_DENIED, SC.NOT_FOUND, SC.FAILED_PRECONDITION})
    if peer == OUTSIDER:
        assert code == SC.PERMISSION_DENIED
    if round_id == "r1" and peer in ROSTER:
        assert code == SC.FAILED_PRECONDITION  # still open
    if code == SC.OK:  # a fuzz round that got three accepted contributions and closed
        header = messages[0].header
        body = b"".join(m.chunk for m in messages[1:])
        assert len(body) == header.payload_bytes
        assert payload.sha256(body) == header.payload_sha256
    assert_unchanged(fed, "DownloadAggregate")


task_ids = st.one_of(texts, st.just("t1"), st.text("abcdef0123", min_size=1, max_size=4).map(
    lambda s: "ft-" + s))


@settings(FUZZ, max_examples=350)
@given(peer=peers, task_id=task_ids)
def test_fuzz_get_task(fed: Fed, peer: str, task_id: str) -> None:
    stub = fed.clients[peer].stub
    code, details, messages = outcome(lambda: list(stub.GetTask(
        pb.GetTaskRequest(task_id=task_id), timeout=CALL_TIMEOUT)))
    check(fed, "GetTask", code, details, {SC.OK, SC.PERMISSION_DENIED, SC.NOT_FOUND})
    if peer == OUTSIDER:
        assert code == SC.PERMISSION_DENIED
    elif task_id == "t1":
        assert code == SC.OK
    if code == SC.OK:
        header = messages[0].header
        body = b"".join(m.chunk for m in messages[1:])
        assert header.task_id == task_id and len(body) == header.payload_bytes
        assert payload.sha256(body) == header.payload_sha256
        if task_id == "t1":
            assert body == fed.task_payload and header.stored_by == "org1"
    assert_unchanged(fed, "GetTask")


# --------------------------------------------------------------------------- raw bodies
_METHODS = pb.DESCRIPTOR.services_by_name["Coordinator"].methods
_REQUEST_TYPES = {m.name: getattr(pb, m.input_type.name) for m in _METHODS}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


@st.composite
def wire_messages(draw: Any) -> bytes:
    """Protobuf-shaped bodies: known and unknown fields, wrong wire types, bad UTF-8."""
    parts = []
    for _ in range(draw(st.integers(0, 6))):
        number = draw(st.one_of(st.integers(1, 12), st.integers(13, 2**29 - 1),
                                st.sampled_from([0, 19000, 19999])))
        wire = draw(st.sampled_from([0, 1, 2, 2, 2, 3, 4, 5, 6, 7]))
        key = _varint((number << 3) | wire)
        if wire == 0:
            parts.append(key + _varint(draw(st.integers(0, 2**70))))
        elif wire == 1:
            parts.append(key + draw(st.binary(min_size=0, max_size=9)))
        elif wire == 2:
            value = draw(st.one_of(
                st.binary(max_size=40), st.sampled_from([b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80",
                                                         b"r1\x80", b"\xf4\x90\x80\x80"])))
            size = len(value) + draw(st.sampled_from([0, 0, 0, 1, -1, 1000]))
            parts.append(key + _varint(max(size, 0)) + value)
        elif wire == 5:
            parts.append(key + draw(st.binary(min_size=0, max_size=5)))
        else:
            parts.append(key)
    return b"".join(parts)


VALID_BODIES: dict[str, list[bytes]] = {}  # filled by the fixture (needs the fingerprint)


def _fill_valid_bodies(fingerprint: str) -> None:
    header = _header_for(fingerprint, LENGTH, "fz-raw")
    header.num_ciphertexts, header.payload_bytes = 2, 70_000
    header.payload_sha256 = b"\x00" * 32
    task = _task_header_for(fingerprint, "ft-raw")
    task.num_ciphertexts, task.payload_bytes, task.payload_sha256 = 2, 70_000, b"\x00" * 32
    VALID_BODIES.update({
        "SubmitContribution": [pb.SubmitContributionRequest(header=header).SerializeToString(),
                               pb.SubmitContributionRequest(chunk=b"FCX1").SerializeToString()],
        "GetRound": [pb.GetRoundRequest(round_id="r1").SerializeToString()],
        "PutTask": [pb.PutTaskRequest(header=task).SerializeToString(),
                    pb.PutTaskRequest(chunk=b"FCX1").SerializeToString()],
        "GetTask": [pb.GetTaskRequest(task_id="t1").SerializeToString()],
        "DownloadAggregate": [pb.DownloadAggregateRequest(round_id="r1").SerializeToString()],
        "AnnounceKey": [pb.AnnounceKeyRequest(federation_id=FED, x25519_public=b"\x01" * 32,
                                              signature=b"s").SerializeToString()],
        "DepositMaskShares": [pb.DepositMaskSharesRequest(federation_id=FED, shares=[
            pb.SealedShare(recipient_id="org2", sealed=b"\x00" * 94)]).SerializeToString()],
        "GetMaskShares": [pb.GetMaskSharesRequest(round_id="r1").SerializeToString()],
        "RevealMaskShares": [pb.RevealMaskSharesRequest(round_id="r1", shares=[
            pb.RevealedShare(owner_id="org1", kind=pb.REVEALED_KIND_SELF_MASK,
                             share=b"\x00" * 66)]).SerializeToString()],
        "PublishKeys": [pb.PublishKeysRequest(
            federation_id=FED, public_context=b"\x0a\x00",
            sealed_keys=[pb.SealedKey(recipient_id="org2")]).SerializeToString()],
    })


def _valid_bodies(name: str) -> list[bytes]:
    return VALID_BODIES.get(name, [b""])


@st.composite
def raw_bodies(draw: Any, name: str) -> bytes:
    kind = draw(st.sampled_from(["binary", "wire", "wire", "mutated", "big"]))
    if kind == "binary":
        return draw(st.binary(max_size=300))
    if kind == "wire":
        return draw(wire_messages())
    if kind == "big":
        n = draw(st.integers(1000, 2_000_000))
        return b"\x0a" + _varint(n) + b"a" * draw(st.sampled_from([n, n - 1, n // 2]))
    body = draw(st.sampled_from(_valid_bodies(name)))
    return mutate(body, draw)[1] if body else body


def _decodes(name: str, body: bytes) -> bool:
    try:
        _REQUEST_TYPES[name].FromString(body)
    except DecodeError:
        return False
    return True


@settings(FUZZ, max_examples=900)
@given(data=st.data())
def test_fuzz_raw_request_bodies(fed: Fed, data: st.DataObject) -> None:
    """Undecodable / oddly encoded request bodies through a generic identity-serializer call."""
    draw = data.draw
    method = draw(st.sampled_from(list(_METHODS)))
    name, path = method.name, f"/{SERVICE}/{method.name}"
    peer = draw(peers)
    channel = fed.clients[peer].channel
    arity_abuse = draw(st.sampled_from([False, False, False, False, True]))
    if method.client_streaming:
        bodies = draw(st.lists(raw_bodies(name), max_size=4))
        if draw(st.booleans()):  # a decodable header first: reach the chunk loop
            bodies = [_valid_bodies(name)[0], *bodies]
    elif arity_abuse:  # zero or several messages on a unary-request method
        bodies = draw(st.lists(raw_bodies(name), max_size=3).filter(lambda b: len(b) != 1))
    else:
        bodies = [draw(raw_bodies(name))]
    stream_in = method.client_streaming or arity_abuse

    def call() -> Any:
        """Identity (de)serializers: the server alone parses these bytes."""
        request = iter(bodies) if stream_in else bodies[0]
        kind = {(True, True): "stream_stream", (True, False): "stream_unary",
                (False, True): "unary_stream", (False, False): "unary_unary"}
        invoke = getattr(channel, kind[(stream_in, method.server_streaming)])(path)
        result = invoke(request, timeout=CALL_TIMEOUT)
        return list(result) if method.server_streaming else result

    undecodable = any(not _decodes(name, b) for b in bodies)
    note(f"method={name} peer={peer} sizes={[len(b) for b in bodies]} undecodable={undecodable}")
    code, details, _ = outcome(call)
    allowed = {SC.OK, SC.INVALID_ARGUMENT, SC.PERMISSION_DENIED, SC.NOT_FOUND,
               SC.FAILED_PRECONDITION, SC.ALREADY_EXISTS, SC.RESOURCE_EXHAUSTED}
    if arity_abuse:
        allowed.add(SC.UNIMPLEMENTED)  # gRPC: "requires exactly one request message"
    check(fed, f"raw:{name}", code, details, allowed)
    if code == SC.OK and name in ("AnnounceKey", "PublishKeys", "SubmitContribution", "PutTask",
                                  "DepositMaskShares", "RevealMaskShares"):
        raise AssertionError(f"raw garbage accepted by {name}")
    assert_unchanged(fed, f"raw {name} ({code.name}: {details})")


@settings(FUZZ, max_examples=30)
@given(method=st.sampled_from(["Nope", "submitcontribution", "GetRound/", ""]),
       body=st.binary(max_size=64))
def test_fuzz_unknown_methods(fed: Fed, method: str, body: bytes) -> None:
    code, details, _ = outcome(lambda: fed.clients["org2"].channel.unary_unary(
        f"/{SERVICE}/{method}")(body, timeout=CALL_TIMEOUT))
    check(fed, "unknown method", code, details, {SC.UNIMPLEMENTED})
    assert_unchanged(fed, "unknown method")


# --------------------------------------------------------------------------- explicit edges
def test_messages_over_the_transport_limit(fed: Fed) -> None:
    """Bodies beyond the server's 16 MiB receive limit: RESOURCE_EXHAUSTED, nothing stored."""
    channel = _raw_channel(fed, "org2", **{"grpc.max_send_message_length": 64 << 20})
    try:
        huge = "r" * (17 << 20)
        cases = [
            ("GetRound", lambda: channel.unary_unary(f"/{SERVICE}/GetRound")(
                pb.GetRoundRequest(round_id=huge).SerializeToString(), timeout=30)),
            ("AnnounceKey", lambda: channel.unary_unary(f"/{SERVICE}/AnnounceKey")(
                pb.AnnounceKeyRequest(certificate_pem=huge).SerializeToString(), timeout=30)),
            ("SubmitContribution", lambda: channel.stream_unary(f"/{SERVICE}/SubmitContribution")(
                iter([pb.SubmitContributionRequest(header=_header(
                    fed, LENGTH, round_id="fz-huge", num_ciphertexts=2, payload_bytes=900_000,
                    payload_sha256=b"\x00" * 32)).SerializeToString(),
                      pb.SubmitContributionRequest(
                          chunk=b"\x00" * (17 << 20)).SerializeToString()]),
                timeout=30)),
        ]
        for name, call in cases:
            code, details, _ = outcome(call)
            check(fed, f"oversized:{name}", code, details, {SC.RESOURCE_EXHAUSTED})
        assert_unchanged(fed, "oversized messages")
    finally:
        channel.close()


def test_stalled_stream_times_out_without_a_trace(fed: Fed) -> None:
    """A header and half the chunks, then silence: the client's deadline ends it cleanly."""
    data = fed.template
    header = _header(fed, LENGTH, round_id="fz-stall", num_ciphertexts=2,
                     payload_bytes=len(data), payload_sha256=payload.sha256(data))

    def stalled() -> Iterator[pb.SubmitContributionRequest]:
        yield pb.SubmitContributionRequest(header=header)
        yield pb.SubmitContributionRequest(chunk=data[:CHUNK])
        time.sleep(5)

    start = time.monotonic()
    stub = fed.clients["org2"].stub
    code, _, _ = outcome(lambda: stub.SubmitContribution(stalled(), timeout=1.0))
    assert code == SC.DEADLINE_EXCEEDED and time.monotonic() - start < 8
    CASES["stalled stream"] += 1
    assert_healthy(fed)
    assert_unchanged(fed, "stalled stream")


def test_undecodable_body_is_invalid_argument(fed: Fed) -> None:
    bad = b"\x0a\x05r1\x80"  # GetRoundRequest.round_id, 5 bytes announced, 3 present
    code, details, _ = outcome(lambda: fed.clients["org2"].channel.unary_unary(
        f"/{SERVICE}/GetRound")(bad, timeout=CALL_TIMEOUT))
    assert_healthy(fed)
    assert code == SC.INVALID_ARGUMENT, (code, details)


def test_contribution_is_not_recorded_when_the_call_failed(fed: Fed) -> None:
    blobs = ckks.encrypt_vector(fed.secret, np.linspace(-1, 1, LENGTH))
    data = payload.frame(blobs)
    header = _header(fed, LENGTH, round_id="fz-undecodable-tail", num_ciphertexts=2,
                     payload_bytes=len(data), payload_sha256=payload.sha256(data))
    bodies = [pb.SubmitContributionRequest(header=header).SerializeToString()]
    bodies += [pb.SubmitContributionRequest(chunk=data[i : i + CHUNK]).SerializeToString()
               for i in range(0, len(data), CHUNK)]
    bodies.append(b"\x12\x05abc")  # chunk field announcing 5 bytes, 3 present
    code, details, _ = outcome(lambda: fed.clients["org3"].channel.stream_unary(
        f"/{SERVICE}/SubmitContribution")(iter(bodies), timeout=CALL_TIMEOUT))
    assert code != SC.OK
    recorded = 0
    for _ in range(30):  # the servicer thread goes on after the status was sent
        time.sleep(0.1)
        recorded = fed.clients["org3"].round("fz-undecodable-tail").contributions
        if recorded:
            break
    if recorded:  # keep the module's bookkeeping right for the tests that follow
        fed.baseline = snapshot(fed)
    assert recorded == 0, f"call failed with {code.name} but the contribution was recorded"
    assert code == SC.INVALID_ARGUMENT, (code, details)


def test_round_id_with_trailing_newline_is_rejected(fed: Fed) -> None:
    blobs = ckks.encrypt_vector(fed.secret, np.linspace(0, 1, LENGTH))
    header = _header(fed, LENGTH, round_id="fz-newline\n")
    code, details, _ = outcome(lambda: fed.clients["org2"].submit(header, blobs, chunk_bytes=CHUNK))
    if code == SC.OK:
        fed.baseline = snapshot(fed)
    assert code == SC.INVALID_ARGUMENT, (code, details)


@pytest.mark.parametrize("rpc", ["AnnounceKey", "DownloadAggregate", "SubmitContribution"])
def test_rejection_of_a_long_string_keeps_its_status_code(fed: Fed, rpc: str) -> None:
    long = "x" * 20_000  # past the client's hard metadata limit (between soft and hard the
    # trailer is dropped at random)
    client = fed.clients["org2"]
    calls = {
        "AnnounceKey": lambda: client.stub.AnnounceKey(
            pb.AnnounceKeyRequest(federation_id=long), timeout=CALL_TIMEOUT),
        "DownloadAggregate": lambda: list(client.stub.DownloadAggregate(
            pb.DownloadAggregateRequest(round_id=long), timeout=CALL_TIMEOUT)),
        "SubmitContribution": lambda: client.stub.SubmitContribution(iter([
            pb.SubmitContributionRequest(header=_header(fed, LENGTH, round_id=long))]),
            timeout=CALL_TIMEOUT),
    }
    code, details, _ = outcome(calls[rpc])
    assert_healthy(fed)
    assert_unchanged(fed, f"long string to {rpc}")
    expected = SC.NOT_FOUND if rpc == "DownloadAggregate" else SC.INVALID_ARGUMENT
    assert code == expected, (code, details[:200])
    assert len(details) <= 1024


@pytest.mark.parametrize("metadata", ["[" * 100_000, "1" * 5000], ids=["nested", "digits"])
def test_unparsable_task_metadata_is_invalid_argument(fed: Fed, metadata: str) -> None:
    data = fed.task_template
    header = _task_header_for(fed.fingerprint, "ft-json")
    header.metadata_json = metadata
    header.num_ciphertexts, header.payload_bytes = 2, len(data)
    header.payload_sha256 = payload.sha256(data)
    messages = _stream(header, data, "normal", CHUNK, lambda _: False, pb.PutTaskRequest)
    code, details, _ = outcome(
        lambda: fed.clients["org2"].stub.PutTask(iter(messages), timeout=CALL_TIMEOUT))
    assert_healthy(fed)
    assert_unchanged(fed, "unparsable metadata")
    assert code == SC.INVALID_ARGUMENT, (code, details)


def test_put_task_from_an_outsider_is_refused_before_the_payload(fed: Fed) -> None:
    header = _task_header_for(fed.fingerprint, "ft-outsider")
    header.num_ciphertexts, header.payload_bytes, header.payload_sha256 = 2, 900_000, b"\0" * 32

    def stalled() -> Iterator[pb.PutTaskRequest]:
        yield pb.PutTaskRequest(header=header)
        time.sleep(3)

    code, details, _ = outcome(
        lambda: fed.clients[OUTSIDER].stub.PutTask(stalled(), timeout=1.0))
    assert_healthy(fed)
    assert_unchanged(fed, "outsider PutTask")
    assert code == SC.PERMISSION_DENIED, (code, details)


# --------------------------------------------------------------------------- the round goes on
def test_valid_participants_complete_r1_after_the_fuzzing(fed: Fed) -> None:
    assert_unchanged(fed, "before completing r1")
    status = fed.clients["org2"].round("r1")
    assert (status.state, status.contributions) == (pb.ROUND_STATE_OPEN, 1)
    # org1's replay is a duplicate, not a second contribution.
    replay = fed.clients["org1"].submit(_header(fed, LENGTH), fed.r1_org1_blobs, chunk_bytes=CHUNK)
    assert (replay.duplicate, replay.contributions) == (True, 1)
    receipts = {}
    for pid in ("org2", "org3"):
        blobs = ckks.encrypt_vector(fed.secret, fed.values[pid])
        receipts[pid] = fed.clients[pid].submit(_header(fed, LENGTH), blobs, chunk_bytes=CHUNK)
    assert receipts["org2"].contributions == 2 and receipts["org2"].duplicate is False
    assert (receipts["org3"].contributions, receipts["org3"].state) == (3, pb.ROUND_STATE_CLOSED)
    aggregate = fed.clients["org2"].download_aggregate("r1")
    assert aggregate.contributions == 3 and aggregate.vector_length == LENGTH
    total = ckks.decrypt_vector(fed.secret, aggregate.blobs, length=LENGTH)
    np.testing.assert_allclose(total, sum(fed.values.values()), atol=1e-4)
    rows = fed.server.store.query(
        "SELECT participant_id, payload_sha256 FROM contributions WHERE round_id = 'r1' "
        "ORDER BY participant_id")
    assert [r[0] for r in rows] == list(ROSTER)
    assert rows[0][1] == payload.sha256(fed.r1_org1).hex()
    assert rows[1][1] == receipts["org2"].payload_sha256.hex()
    assert rows[2][1] == receipts["org3"].payload_sha256.hex()
    # The cached task survived the fuzzing, bit for bit, and still decrypts.
    task = fed.clients["org3"].get_task("t1")
    assert task is not None and task[0].stored_by == "org1"
    np.testing.assert_allclose(
        ckks.decrypt_vector(fed.secret, task[1], length=TASK_V + TASK_C), fed.task_values,
        atol=1e-6)
    assert_healthy(fed)
