"""``CoordinatorClient``: the participant's side of the gRPC contract.

Every call carries a deadline; only ``UNAVAILABLE`` and ``DEADLINE_EXCEEDED`` are retried,
with jittered exponential backoff. Payloads are streamed in the federation's chunk size.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc

from privacy import payload
from proto.fedctx.v1 import fedctx_pb2 as pb
from proto.fedctx.v1 import fedctx_pb2_grpc as pb_grpc

from .errors import ProtocolError

logger = logging.getLogger(__name__)
T = TypeVar("T")
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Client certificate, its key, and the CA that signed the coordinator's certificate."""

    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True, slots=True)
class DownloadedAggregate:
    """A decrypted-later aggregate: framed ciphertexts and how many were summed."""

    round_id: str
    contributions: int
    vector_length: int
    blobs: list[bytes]
    ckks_context_fingerprint: str
    payload_bytes: int


class CoordinatorClient:
    """A mutually authenticated channel to one coordinator.

    Args:
        target: ``host:port``.
        tls: the participant's TLS files.
        timeout_s: deadline of each unary call (streams get ``stream_timeout_s``).
        retries: attempts for retryable failures.
        server_name: override of the expected server certificate name.
    """

    def __init__(
        self, target: str, tls: TlsFiles, *, timeout_s: float = 30.0,
        stream_timeout_s: float = 600.0, retries: int = 5, server_name: str | None = None,
    ) -> None:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=tls.ca.read_bytes(), private_key=tls.key.read_bytes(),
            certificate_chain=tls.cert.read_bytes(),
        )
        options: list[tuple[str, object]] = [
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            ("grpc.max_send_message_length", 16 * 1024 * 1024),
        ]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        self.channel = grpc.secure_channel(target, credentials, options=options)
        self.stub = pb_grpc.CoordinatorStub(self.channel)
        self.timeout_s = timeout_s
        self.stream_timeout_s = stream_timeout_s
        self.retries = retries
        self.bytes_sent = 0
        self.bytes_received = 0

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()

    def __enter__(self) -> CoordinatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, name: str, fn: Callable[[], T]) -> T:
        delay = 0.2
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except grpc.RpcError as exc:
                code = exc.code()  # type: ignore[attr-defined]
                overloaded = code == grpc.StatusCode.RESOURCE_EXHAUSTED and \
                    "Concurrent RPC limit" in (exc.details() or "")  # type: ignore[attr-defined]
                if (code not in RETRYABLE and not overloaded) or attempt == self.retries:
                    raise
                logger.info("[CoordinatorClient.%s] %s, retry %d", name, code.name, attempt + 1)
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    # -- unary calls -------------------------------------------------------------------
    def wait_ready(self, *, timeout_s: float = 60.0) -> None:
        """Block until the channel is connected (the coordinator may still be starting)."""
        grpc.channel_ready_future(self.channel).result(timeout=timeout_s)

    def federation(self) -> pb.GetFederationResponse:
        """Federation parameters and pinned bindings."""
        return self._call("GetFederation", lambda: self.stub.GetFederation(
            pb.GetFederationRequest(), timeout=self.timeout_s))

    def announce_key(self, request: pb.AnnounceKeyRequest) -> None:
        """Announce this participant's signed X25519 key."""
        self.bytes_sent += request.ByteSize()
        self._call("AnnounceKey", lambda: self.stub.AnnounceKey(request, timeout=self.timeout_s))

    def key_announcements(self) -> list[pb.KeyAnnouncement]:
        """Every participant's announced key."""
        response = self._call("ListKeyAnnouncements", lambda: self.stub.ListKeyAnnouncements(
            pb.ListKeyAnnouncementsRequest(), timeout=self.timeout_s))
        return list(response.announcements)

    def publish_keys(self, request: pb.PublishKeysRequest) -> str:
        """Keyholder only: publish the public context and sealed secret contexts."""
        self.bytes_sent += request.ByteSize()
        response = self._call("PublishKeys", lambda: self.stub.PublishKeys(
            request, timeout=self.timeout_s))
        return response.ckks_context_fingerprint

    def fetch_sealed_key(self) -> pb.FetchSealedKeyResponse:
        """This participant's sealed secret context (FAILED_PRECONDITION until published)."""
        response = self._call("FetchSealedKey", lambda: self.stub.FetchSealedKey(
            pb.FetchSealedKeyRequest(), timeout=self.timeout_s))
        self.bytes_received += response.ByteSize()
        return response

    def round(self, round_id: str) -> pb.GetRoundResponse:
        """A round's state."""
        return self._call("GetRound", lambda: self.stub.GetRound(
            pb.GetRoundRequest(round_id=round_id), timeout=self.timeout_s))

    def deposit_mask_shares(self, request: pb.DepositMaskSharesRequest) -> None:
        """Dropout recovery: deposit the sealed shares of this participant's mask key."""
        self.bytes_sent += request.ByteSize()
        self._call("DepositMaskShares", lambda: self.stub.DepositMaskShares(
            request, timeout=self.timeout_s))

    def mask_shares(self, round_id: str, *,
                    omit_revealed: bool = False) -> pb.GetMaskSharesResponse:
        """Shares sealed to this participant (``round_id`` ``""``: the mask-key deposits)
        and a closed round's revealed shares, or only their count (FAILED_PRECONDITION
        while it is open)."""
        response = self._call("GetMaskShares", lambda: self.stub.GetMaskShares(
            pb.GetMaskSharesRequest(round_id=round_id, omit_revealed=omit_revealed),
            timeout=self.timeout_s))
        self.bytes_received += response.ByteSize()
        return response

    def reveal_mask_shares(self, request: pb.RevealMaskSharesRequest) -> int:
        """Reveal this survivor's shares for a closed round; returns the revealers so far."""
        self.bytes_sent += request.ByteSize()
        return self._call("RevealMaskShares", lambda: self.stub.RevealMaskShares(
            request, timeout=self.timeout_s)).revealers

    # -- streams -----------------------------------------------------------------------
    def _upload(self, method: str, request_type: Any, header: Any, blobs: list[bytes], *,
                chunk_bytes: int) -> Any:
        """Stream ``header`` then the framed ciphertexts in chunks; fills the header's
        size, digest and count. Retried uploads are idempotent (same digest)."""
        data = payload.frame(blobs)
        header.payload_bytes = len(data)
        header.payload_sha256 = payload.sha256(data)
        header.num_ciphertexts = len(blobs)

        def messages() -> Iterator[Any]:
            yield request_type(header=header)
            for offset in range(0, len(data), chunk_bytes):
                yield request_type(chunk=data[offset : offset + chunk_bytes])

        stub_method = getattr(self.stub, method)
        response = self._call(method,
                              lambda: stub_method(messages(), timeout=self.stream_timeout_s))
        self.bytes_sent += len(data) + header.ByteSize()
        return response

    def submit(
        self, header: pb.ContributionHeader, blobs: list[bytes], *, chunk_bytes: int
    ) -> pb.SubmitContributionResponse:
        """Upload one contribution (framed ciphertexts) to its round."""
        return self._upload("SubmitContribution", pb.SubmitContributionRequest, header, blobs,
                            chunk_bytes=chunk_bytes)

    def put_task(self, header: pb.TaskHeader, blobs: list[bytes], *, chunk_bytes: int) -> bool:
        """Store a finished task in the coordinator's cache; True if it was already there."""
        response = self._upload("PutTask", pb.PutTaskRequest, header, blobs,
                                chunk_bytes=chunk_bytes)
        return bool(response.duplicate)

    def get_task(self, task_id: str) -> tuple[pb.TaskHeader, list[bytes]] | None:
        """A cached task (header, ciphertexts), or None if the coordinator has none."""

        def fetch() -> tuple[pb.TaskHeader, list[bytes]] | None:
            try:
                header, data = _read_stream(self.stub.GetTask(
                    pb.GetTaskRequest(task_id=task_id), timeout=self.stream_timeout_s),
                    what=f"task {task_id!r}")
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                    return None
                raise
            self.bytes_received += len(data)
            return header, payload.unframe(data)

        return self._call("GetTask", fetch)

    def list_tasks(self) -> list[pb.TaskHeader]:
        """Headers of the cached tasks."""
        return list(self._call("ListTasks", lambda: self.stub.ListTasks(
            pb.ListTasksRequest(), timeout=self.timeout_s)).tasks)

    def download_aggregate(self, round_id: str) -> DownloadedAggregate:
        """Download and digest-check a closed round's encrypted sum."""

        def fetch() -> DownloadedAggregate:
            header, data = _read_stream(self.stub.DownloadAggregate(
                pb.DownloadAggregateRequest(round_id=round_id), timeout=self.stream_timeout_s),
                what=f"aggregate of round {round_id!r}")
            self.bytes_received += len(data)
            return DownloadedAggregate(
                round_id, header.contributions, header.vector_length, payload.unframe(data),
                header.ckks_context_fingerprint, len(data),
            )

        return self._call("DownloadAggregate", fetch)

    def wait_for_round(
        self, round_id: str, *, timeout_s: float, poll_s: float = 0.25
    ) -> pb.GetRoundResponse:
        """Poll until the round is closed; raise if it failed or the wait times out."""
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.round(round_id)
            if status.state == pb.ROUND_STATE_CLOSED:
                return status
            if status.state == pb.ROUND_STATE_FAILED:
                raise ProtocolError(f"round {round_id!r} failed to reach quorum")
            if time.monotonic() > deadline:
                raise ProtocolError(f"round {round_id!r} still open after {timeout_s:.0f} s")
            time.sleep(poll_s)
            poll_s = min(poll_s * 1.5, 2.0)


def _read_stream(stream: Iterator[Any], *, what: str) -> tuple[Any, bytes]:
    """``(header, payload)`` of a header-then-chunks response stream, digest-checked."""
    header = None
    buffer = bytearray()
    for message in stream:
        if message.WhichOneof("part") == "header":
            if header is not None:
                raise ProtocolError(f"{what}: two headers in one stream")
            header = message.header
        else:
            buffer.extend(message.chunk)
    if header is None or len(buffer) != header.payload_bytes:
        raise ProtocolError(f"{what} arrived incomplete")
    if payload.sha256(bytes(buffer)) != header.payload_sha256:
        raise ProtocolError(f"{what} failed its digest check")
    return header, bytes(buffer)


def is_not_ready(exc: grpc.RpcError) -> bool:
    """Whether an error means "not yet, poll again"."""
    return exc.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined,no-any-return]
