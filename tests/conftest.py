"""Shared fixtures: offline tiny checkpoint, throwaway PKI, a running coordinator."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# $FEDCTX_DATA (as participant.data reads it) or the ../shared/data beside the checkout
SHARED_DATA = Path(os.environ.get("FEDCTX_DATA")
                   or Path(__file__).resolve().parents[2] / "shared" / "data")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved 2-layer random Llama with a word-level tokenizer."""
    from tiny_checkpoint import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared labelled data sets (../shared/data beside the repository)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture()
def pki(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A throwaway CA with certificates for org1, org2, org3."""
    from fedctx.provision import provision

    return provision(tmp_path / "pki", ["org1", "org2", "org3"])


@pytest.fixture()
def coordinator_factory(tmp_path: Path, pki) -> Iterator:  # type: ignore[no-untyped-def]
    """Start in-process coordinators on 127.0.0.1:0; all stopped at teardown."""
    from coordinator.config import CoordinatorConfig
    from coordinator.server import CoordinatorServer

    servers = []

    def start(roster=("org1", "org2"), **overrides):  # type: ignore[no-untyped-def]
        config = CoordinatorConfig(
            federation_id=overrides.pop("federation_id", "fed-test"), roster=tuple(roster),
            keyholder_id=roster[0], state_dir=overrides.pop("state_dir", tmp_path / "coord"),
            tls_cert=pki.coordinator_cert, tls_key=pki.coordinator_key, tls_ca=pki.ca_cert,
            **overrides,
        )
        server = CoordinatorServer(config).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(grace_s=0)
