"""Fault injection with real OS processes: the coordinator runs as ``python -m fedctx.cli``.

(a) the coordinator is SIGKILLed mid-round (one contribution accepted, one upload in
    flight) and restarted on the same state dir: the accepted contribution survives, the
    in-flight one left no trace, the round completes with exactly three contributions and
    the decrypted sum is the plaintext sum;
(b) a participant process SIGKILLs itself mid-upload (after the header only, after half
    the chunks): nothing is recorded for it, the coordinator stays healthy, and the same
    participant later uploads fully (also covered: killed after every chunk but before
    closing the stream, where at most its exact, digest-checked payload may be counted);
(c) a participant never shows up: with quorum 2 of 3 the round closes at its deadline
    with 2 contributions and a late upload gets FAILED_PRECONDITION; with quorum 3 of 3
    the round FAILS and DownloadAggregate answers FAILED_PRECONDITION.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedctx.provision import provision
from participant.client import CoordinatorClient, TlsFiles
from privacy import ckks, keyshare, payload
from proto.fedctx.v1 import fedctx_pb2 as pb

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

FED = "fed-fault"
ROSTER = ("org1", "org2", "org3")
REPO = Path(__file__).resolve().parents[2]
LENGTH = 2100  # two ciphertexts at 2048 slots
CHUNK = 16 * 1024
MODEL_FP, LAYER_FP = "m" * 64, "l" * 64


# --------------------------------------------------------------------------- processes
@dataclass
class Coordinator:
    """A coordinator process started from a TOML file."""

    process: subprocess.Popen[bytes]
    port: int
    config: Path
    state_dir: Path
    log: Path
    pki: Any

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


def _toml_value(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


def write_config(path: Path, pki: Any, state_dir: Path, **overrides: object) -> Path:
    table: dict[str, object] = {
        "federation_id": FED, "roster": list(ROSTER), "keyholder_id": "org1",
        "state_dir": str(state_dir), "tls_cert": str(pki.coordinator_cert),
        "tls_key": str(pki.coordinator_key), "tls_ca": str(pki.ca_cert),
        "host": "127.0.0.1", "port": 0, "chunk_bytes": CHUNK, "round_timeout_s": 600.0,
        **overrides,
    }
    lines = [f"{key} = {_toml_value(value)}" for key, value in table.items()]
    path.write_text("[coordinator]\n" + "\n".join(lines) + "\n")
    return path


@pytest.fixture()
def launch(tmp_path: Path) -> Iterator[Any]:
    """Start coordinator processes; every one still alive is SIGKILLed at teardown."""
    started: list[subprocess.Popen[bytes]] = []

    def start(config: Path, state_dir: Path, pki: Any, name: str = "coordinator") -> Coordinator:
        port_file = tmp_path / f"{name}-{len(started)}.port"
        log = tmp_path / f"{name}-{len(started)}.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "fedctx.cli", "-v", "coordinator", "--config", str(config),
             "--port-file", str(port_file)],
            stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=REPO,
            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"},
        )
        started.append(process)
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"coordinator did not start:\n{log.read_text()[-4000:]}")
            time.sleep(0.05)
        coordinator = Coordinator(process, int(port_file.read_text()), config, state_dir, log, pki)
        wait_healthy(coordinator)
        return coordinator

    yield start
    for process in started:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def client(pki: Any, pid: str, port: int) -> CoordinatorClient:
    cert, key = pki.participants[pid]
    return CoordinatorClient(f"127.0.0.1:{port}", TlsFiles(cert, key, pki.ca_cert),
                             timeout_s=10, stream_timeout_s=30, retries=0)


def wait_healthy(coordinator: Coordinator) -> None:
    """SERVING on the coordinator's health service (over mutual TLS)."""
    with client(coordinator.pki, "org1", coordinator.port) as c:
        c.wait_ready(timeout_s=30)
        health = health_pb2_grpc.HealthStub(c.channel)
        status = health.Check(health_pb2.HealthCheckRequest(service="fedctx.v1.Coordinator"),
                              timeout=10).status
    assert status == health_pb2.HealthCheckResponse.SERVING, coordinator.log_tail()


# --------------------------------------------------------------------------- federation
@dataclass
class Keys:
    secret: Any
    fingerprint: str


def ceremony(pki: Any, port: int) -> Keys:
    """The real key ceremony (org1 creates and seals the CKKS key to org2 and org3)."""
    privates = {}
    clients = {pid: client(pki, pid, port) for pid in ROSTER}
    try:
        for pid, c in clients.items():
            private, public = keyshare.generate_x25519_keypair()
            privates[pid] = private
            c.announce_key(pb.AnnounceKeyRequest(
                federation_id=FED, x25519_public=public,
                signature=keyshare.sign_key_announcement(
                    federation_id=FED, participant_id=pid, x25519_public=public,
                    signing_key_pem=pki.participants[pid][1].read_bytes()),
                certificate_pem=pki.participants[pid][0].read_text()))
        secret = ckks.create_secret_context(ckks.CkksParams())
        public = ckks.serialize_public_context(secret)
        fingerprint = ckks.context_fingerprint(public)
        secret_bytes = ckks.serialize_secret_context(secret)
        sealed = [
            pb.SealedKey(recipient_id=a.participant_id, sealed_secret_context=keyshare.seal(
                secret_bytes, recipient_x25519_public=a.x25519_public, federation_id=FED,
                recipient_id=a.participant_id, public_context_fingerprint=fingerprint,
                sender_signing_key_pem=pki.participants["org1"][1].read_bytes()))
            for a in clients["org1"].key_announcements() if a.participant_id != "org1"
        ]
        assert clients["org1"].publish_keys(pb.PublishKeysRequest(
            federation_id=FED, public_context=public,
            ckks_params_fingerprint=ckks.CkksParams().fingerprint(), model_fingerprint=MODEL_FP,
            layer_map_fingerprint=LAYER_FP, sealed_keys=sealed)) == fingerprint
        response = clients["org3"].fetch_sealed_key()
        opened = keyshare.open_sealed(
            response.sealed_secret_context, recipient_x25519_private=privates["org3"],
            federation_id=FED, recipient_id="org3",
            public_context_fingerprint=response.ckks_context_fingerprint,
            sender_certificate_pem=response.keyholder_certificate_pem.encode(),
            ca_certificate_pem=pki.ca_cert.read_bytes(), sender_id="org1")
        assert ckks.load_secret_context(opened).has_secret_key()
    finally:
        for c in clients.values():
            c.close()
    return Keys(secret, fingerprint)


def header(keys: Keys, round_id: str = "r1") -> pb.ContributionHeader:
    return pb.ContributionHeader(
        federation_id=FED, round_id=round_id, model_fingerprint=MODEL_FP,
        layer_map_fingerprint=LAYER_FP, ckks_context_fingerprint=keys.fingerprint,
        vector_length=LENGTH, kind="context_vector")


def values_for() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2024)
    return {pid: rng.uniform(-3, 3, size=LENGTH) for pid in ROSTER}


def submit(pki: Any, port: int, pid: str, keys: Keys, values: np.ndarray,
           round_id: str = "r1") -> pb.SubmitContributionResponse:
    with client(pki, pid, port) as c:
        return c.submit(header(keys, round_id), ckks.encrypt_vector(keys.secret, values),
                        chunk_bytes=CHUNK)


def code_of(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def db_rows(state_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    """Read the coordinator's committed state through a separate read-only connection."""
    db = sqlite3.connect(f"file:{state_dir / 'coordinator.sqlite3'}?mode=ro", uri=True)
    try:
        return list(db.execute(sql).fetchall())
    finally:
        db.close()


def blob_names(state_dir: Path) -> set[str]:
    return {p.name for p in (state_dir / "blobs").iterdir()}


def assert_sum(pki: Any, port: int, keys: Keys, round_id: str, expected: np.ndarray,
               contributions: int) -> None:
    with client(pki, "org2", port) as c:
        aggregate = c.download_aggregate(round_id)
    assert aggregate.contributions == contributions
    total = ckks.decrypt_vector(keys.secret, aggregate.blobs, length=LENGTH)
    np.testing.assert_allclose(total, expected, atol=1e-4)


@pytest.fixture()
def pki(tmp_path: Path) -> Any:
    return provision(tmp_path / "pki", list(ROSTER))


# --------------------------------------------------------------------------- (a)
def test_coordinator_killed_mid_round_resumes_after_restart(
    launch: Any, pki: Any, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    config = write_config(tmp_path / "coordinator.toml", pki, state)
    first = launch(config, state, pki)
    keys = ceremony(pki, first.port)
    values = values_for()
    org1_blobs = ckks.encrypt_vector(keys.secret, values["org1"])
    with client(pki, "org1", first.port) as c:
        receipt = c.submit(header(keys), org1_blobs, chunk_bytes=CHUNK)
    assert (receipt.contributions, receipt.state) == (1, pb.ROUND_STATE_OPEN)

    # org2 is mid-upload (header and one chunk sent, stream open) when the coordinator dies.
    data = payload.frame(ckks.encrypt_vector(keys.secret, values["org2"]))
    in_flight = header(keys)
    in_flight.num_ciphertexts, in_flight.payload_bytes = 2, len(data)
    in_flight.payload_sha256 = payload.sha256(data)
    sent, release = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def stalled() -> Iterator[pb.SubmitContributionRequest]:
        yield pb.SubmitContributionRequest(header=in_flight)
        yield pb.SubmitContributionRequest(chunk=data[:CHUNK])
        sent.set()
        release.wait(20)

    def upload() -> None:
        with client(pki, "org2", first.port) as c:
            try:
                c.stub.SubmitContribution(stalled(), timeout=30)
                outcome["code"] = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                outcome["code"] = exc.code()

    uploader = threading.Thread(target=upload, daemon=True)
    uploader.start()
    assert sent.wait(10)
    time.sleep(0.3)  # let the chunk reach the coordinator
    os.kill(first.process.pid, signal.SIGKILL)
    assert first.process.wait(timeout=10) == -signal.SIGKILL
    release.set()
    uploader.join(15)
    assert outcome.get("code") == grpc.StatusCode.UNAVAILABLE, outcome

    # Only org1's contribution is on disk; the in-flight upload left nothing behind.
    assert [r[0] for r in db_rows(state, "SELECT participant_id FROM contributions")] == ["org1"]
    assert not [n for n in blob_names(state) if n.startswith(".")]
    assert payload.sha256(data).hex() not in blob_names(state)

    second = launch(config, state, pki)
    with client(pki, "org2", second.port) as c:
        status = c.round("r1")
        assert (status.state, status.contributions, status.contributed) == (
            pb.ROUND_STATE_OPEN, 1, False)
        # The sealed key relay survived the crash too.
        assert c.fetch_sealed_key().ckks_context_fingerprint == keys.fingerprint
    with client(pki, "org1", second.port) as c:
        assert c.round("r1").contributed is True
    # org1 retrying its upload after the crash is answered as a duplicate, not counted twice.
    with client(pki, "org1", second.port) as c:
        again = c.submit(header(keys), org1_blobs, chunk_bytes=CHUNK)
    assert (again.duplicate, again.contributions) == (True, 1)
    assert submit(pki, second.port, "org2", keys, values["org2"]).contributions == 2
    last = submit(pki, second.port, "org3", keys, values["org3"])
    assert (last.contributions, last.state) == (3, pb.ROUND_STATE_CLOSED)
    assert_sum(pki, second.port, keys, "r1", sum(values.values()), contributions=3)
    rows = db_rows(state, "SELECT participant_id FROM contributions WHERE round_id = 'r1' "
                          "ORDER BY participant_id")
    assert [r[0] for r in rows] == list(ROSTER)
    assert db_rows(state, "SELECT state, contributions_in_aggregate FROM rounds") == [("closed", 3)]


# --------------------------------------------------------------------------- (b)
_DYING_PARTICIPANT = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    from participant.client import CoordinatorClient, TlsFiles
    from proto.fedctx.v1 import fedctx_pb2 as pb

    port, cert, key, ca, workdir, mode = sys.argv[1:7]
    work = Path(workdir)
    header = pb.ContributionHeader.FromString((work / "header.bin").read_bytes())
    data = (work / "payload.bin").read_bytes()
    chunk = int(sys.argv[7])
    chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    keep = {"header_only": 0, "half_chunks": len(chunks) // 2}.get(mode, len(chunks))

    def messages():
        yield pb.SubmitContributionRequest(header=header)
        for part in chunks[:keep]:
            yield pb.SubmitContributionRequest(chunk=part)
        time.sleep(0.5)  # everything yielded so far is on the wire
        (work / "sent").write_text(str(keep))
        os.kill(os.getpid(), signal.SIGKILL)  # die before finishing the stream
        yield pb.SubmitContributionRequest(chunk=b"never")

    client = CoordinatorClient(f"127.0.0.1:{port}", TlsFiles(Path(cert), Path(key), Path(ca)),
                               retries=0)
    client.stub.SubmitContribution(messages(), timeout=60)
    sys.exit(3)  # unreachable: the process killed itself
""")


def _kill_participant_mid_upload(pki: Any, port: int, workdir: Path, data: bytes,
                                 hdr: pb.ContributionHeader, mode: str) -> int:
    workdir.mkdir()
    (workdir / "header.bin").write_bytes(hdr.SerializeToString())
    (workdir / "payload.bin").write_bytes(data)
    cert, key = pki.participants["org2"]
    child = subprocess.run(
        [sys.executable, "-c", _DYING_PARTICIPANT, str(port), str(cert), str(key),
         str(pki.ca_cert), str(workdir), mode, str(CHUNK)],
        cwd=REPO, capture_output=True, timeout=60,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-3000:]
    return int((workdir / "sent").read_text())


def test_participant_killed_mid_upload_leaves_no_trace(
    launch: Any, pki: Any, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    config = write_config(tmp_path / "coordinator.toml", pki, state)
    coordinator = launch(config, state, pki)
    keys = ceremony(pki, coordinator.port)
    values = values_for()
    assert submit(pki, coordinator.port, "org1", keys, values["org1"]).contributions == 1
    rows_before = db_rows(state, "SELECT * FROM contributions")
    rounds_before = db_rows(state, "SELECT * FROM rounds")
    blobs_before = blob_names(state)

    blobs = ckks.encrypt_vector(keys.secret, values["org2"])
    data = payload.frame(blobs)
    hdr = header(keys)
    hdr.num_ciphertexts, hdr.payload_bytes = len(blobs), len(data)
    hdr.payload_sha256 = payload.sha256(data)
    total_chunks = -(-len(data) // CHUNK)
    for mode in ("header_only", "half_chunks"):
        sent = _kill_participant_mid_upload(pki, coordinator.port, tmp_path / mode, data, hdr, mode)
        assert sent == {"header_only": 0, "half_chunks": total_chunks // 2}[mode]
        time.sleep(0.3)  # the coordinator notices the dead stream
        assert coordinator.process.poll() is None, coordinator.log_tail()
        wait_healthy(coordinator)
        # Partial uploads are never counted, nor stored.
        assert db_rows(state, "SELECT * FROM contributions") == rows_before, mode
        assert db_rows(state, "SELECT * FROM rounds") == rounds_before, mode
        assert blob_names(state) == blobs_before, mode
        with client(pki, "org2", coordinator.port) as c:
            status = c.round("r1")
        assert (status.contributions, status.contributed) == (1, False), mode

    # Every byte sent, then killed before half-closing the stream. gRPC-python may report
    # the dropped connection to the servicer as a clean end of stream (the receive-message
    # and close-on-server events race), so the coordinator may or may not count it; if it
    # does, it is exactly the payload the header committed to (digest-checked), nothing else.
    sent = _kill_participant_mid_upload(pki, coordinator.port, tmp_path / "all", data, hdr,
                                        "all_chunks_no_close")
    assert sent == total_chunks
    time.sleep(0.3)
    assert coordinator.process.poll() is None, coordinator.log_tail()
    wait_healthy(coordinator)
    new_rows = set(db_rows(state, "SELECT * FROM contributions")) - set(rows_before)
    counted = bool(new_rows)
    assert [(r[1], r[2], r[3]) for r in new_rows] in (
        [], [("org2", payload.sha256(data).hex(), len(data))])
    assert blob_names(state) - blobs_before == ({payload.sha256(data).hex()} if counted else set())
    assert not [n for n in blob_names(state) if n.startswith(".")]

    # The same participant later uploads the very same payload in full.
    with client(pki, "org2", coordinator.port) as c:
        receipt = c.submit(header(keys), blobs, chunk_bytes=CHUNK)
    assert (receipt.contributions, receipt.duplicate) == (2, counted)
    assert receipt.payload_sha256 == payload.sha256(data)
    last = submit(pki, coordinator.port, "org3", keys, values["org3"])
    assert (last.contributions, last.state) == (3, pb.ROUND_STATE_CLOSED)
    assert_sum(pki, coordinator.port, keys, "r1", sum(values.values()), contributions=3)
    assert coordinator.process.poll() is None


# --------------------------------------------------------------------------- (c)
def test_participant_that_never_shows_up(launch: Any, pki: Any, tmp_path: Path) -> None:
    """Two coordinators side by side (one wait for both deadlines): quorum 2/3 and 3/3."""
    timeout_s = 2.0
    setups = {}
    for quorum in (2, 3):
        state = tmp_path / f"state-q{quorum}"
        config = write_config(tmp_path / f"coordinator-q{quorum}.toml", pki, state,
                              quorum=quorum, round_timeout_s=timeout_s)
        coordinator = launch(config, state, pki, name=f"q{quorum}")
        setups[quorum] = (coordinator, ceremony(pki, coordinator.port))
    values = values_for()
    opened, deadlines = time.time(), []
    for quorum, (coordinator, keys) in setups.items():
        for pid in ("org1", "org2"):
            receipt = submit(pki, coordinator.port, pid, keys, values[pid])
            assert receipt.state == pb.ROUND_STATE_OPEN  # org3 might still come
        with client(pki, "org1", coordinator.port) as c:
            status = c.round("r1")
        assert (status.state, status.contributions, status.quorum) == (
            pb.ROUND_STATE_OPEN, 2, quorum)
        assert opened - 1 < status.deadline_unix_s - timeout_s <= time.time()
        deadlines.append(status.deadline_unix_s)

    # Past the deadline the ticker (every 0.5 s) settles both rounds without any call.
    time.sleep(max(0.0, max(deadlines) - time.time()) + 1.0)
    for coordinator, _ in setups.values():
        assert db_rows(coordinator.state_dir, "SELECT state FROM rounds") != [("open",)], \
            coordinator.log_tail()

    # quorum 2 of 3: closed with the two contributions; org3's late upload is refused.
    coordinator, keys = setups[2]
    with client(pki, "org3", coordinator.port) as c:
        status = c.round("r1")
        assert (status.state, status.contributions) == (pb.ROUND_STATE_CLOSED, 2)
        late = ckks.encrypt_vector(keys.secret, values["org3"])
        assert code_of(lambda: c.submit(header(keys), late, chunk_bytes=CHUNK)) \
            == grpc.StatusCode.FAILED_PRECONDITION
    assert_sum(pki, coordinator.port, keys, "r1", values["org1"] + values["org2"], contributions=2)
    assert db_rows(coordinator.state_dir, "SELECT state, contributions_in_aggregate FROM rounds") \
        == [("closed", 2)]
    assert len(db_rows(coordinator.state_dir, "SELECT * FROM contributions")) == 2

    # quorum 3 of 3: the round failed; no aggregate, late uploads refused.
    coordinator, keys = setups[3]
    with client(pki, "org1", coordinator.port) as c:
        status = c.round("r1")
        assert (status.state, status.contributions) == (pb.ROUND_STATE_FAILED, 2)
        assert status.aggregate_sha256 == b""
        assert code_of(lambda: c.download_aggregate("r1")) == grpc.StatusCode.FAILED_PRECONDITION
    with client(pki, "org3", coordinator.port) as c:
        late = ckks.encrypt_vector(keys.secret, values["org3"])
        assert code_of(lambda: c.submit(header(keys), late, chunk_bytes=CHUNK)) \
            == grpc.StatusCode.FAILED_PRECONDITION
    assert db_rows(coordinator.state_dir, "SELECT state, aggregate_sha256 FROM rounds") \
        == [("failed", None)]
    assert len(db_rows(coordinator.state_dir, "SELECT * FROM contributions")) == 2
    for coordinator, _ in setups.values():
        assert coordinator.process.poll() is None, coordinator.log_tail()
