"""A Node.js (@grpc/grpc-js) client built only from the .proto talks to the coordinator."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from ceremony import contribution_header, key_ceremony

from privacy import ckks, payload
from proto.fedctx.v1 import fedctx_pb2 as pb

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
ROSTER = ("org1", "org2", "org3")
NODE_DIR = Path(__file__).resolve().parents[2] / "clients" / "node"
NODE_CLIENT = NODE_DIR / "fedctx-client.mjs"
INSTALL = "npm ci --prefix clients/node --no-audit --no-fund"


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip(f"node is not on PATH (install Node.js >= 18, then run `{INSTALL}`)")
    if not (NODE_DIR / "node_modules").is_dir():
        pytest.skip(f"clients/node/node_modules is missing: run `{INSTALL}` in the repository root")
    return node


def _setup_keys(pki, port):  # type: ignore[no-untyped-def]
    clients, context, federation, _ = key_ceremony(pki, port, ROSTER)
    return clients, context, federation


def _run_node(
    node: str, port: int, ca: Path, cert: Path, key: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [node, str(NODE_CLIENT), "--target", f"127.0.0.1:{port}", "--ca", str(ca),
         "--cert", str(cert), "--key", str(key), "--round", "r1", *extra],
        capture_output=True, text=True, timeout=60, check=False)


def test_node_client_reads_status_and_downloads_the_aggregate(  # type: ignore[no-untyped-def]
    coordinator_factory, pki, tmp_path
) -> None:
    node = _node()
    server = coordinator_factory(roster=ROSTER)
    clients, context, federation = _setup_keys(pki, server.port)
    length = 3000  # two ciphertexts at 2048 slots
    for i, pid in enumerate(ROSTER):
        values = np.random.default_rng(i).normal(size=length)
        response = clients[pid].submit(contribution_header(federation, length),
                                       ckks.encrypt_vector(context, values),
                                       chunk_bytes=federation.chunk_bytes)
    assert response.state == pb.ROUND_STATE_CLOSED
    expected = payload.frame(clients["org1"].download_aggregate("r1").blobs)

    out = tmp_path / "aggregate.bin"
    cert, key = pki.participants["org2"]
    done = _run_node(node, server.port, pki.ca_cert, cert, key, "--out", str(out))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["health"] == "SERVING"
    assert report["federation_id"] == "fed-test"
    assert report["roster"] == list(ROSTER)
    assert report["keyholder_id"] == "org1"
    assert report["round"]["state"] == "ROUND_STATE_CLOSED"
    assert report["round"]["contributions"] == 3
    aggregate = report["aggregate"]
    assert aggregate["contributions"] == 3
    assert aggregate["vector_length"] == length
    assert aggregate["payload_bytes"] == len(expected)
    assert aggregate["sha256_ok"] is True
    assert out.read_bytes() == expected

    # A certificate from another CA is refused by the server: clear failure, no output.
    from fedctx.provision import provision

    foreign = provision(tmp_path / "other-pki", ["org2"])
    cert, key = foreign.participants["org2"]
    refused_out = tmp_path / "refused.bin"
    refused = _run_node(node, server.port, pki.ca_cert, cert, key, "--out", str(refused_out))
    assert refused.returncode != 0
    assert "fedctx-client: error:" in refused.stderr
    assert "UNAVAILABLE" in refused.stderr
    assert refused.stdout == ""
    assert not refused_out.exists()
