"""gRPC adapter over :class:`Aggregator`: parses messages, authenticates, maps errors.

This is the only module that turns exceptions into ``grpc.StatusCode``s. Unexpected
errors become ``INTERNAL`` with a generic message: internals and bytes are never echoed.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any, NoReturn, TypeVar

import grpc

from privacy.errors import ConfigError, CryptoError
from proto.fedctx.v1 import fedctx_pb2 as pb
from proto.fedctx.v1 import fedctx_pb2_grpc as pb_grpc

from .aggregator import (
    CLOSED,
    FAILED,
    MASK_KEY,
    OPEN,
    SELF_MASK,
    Aggregator,
    Header,
    TaskEntry,
)
from .errors import (
    BindingMismatchError,
    ConflictError,
    CoordinatorError,
    InvalidContributionError,
    NotAllowedError,
    NotFoundError,
    NotReadyError,
    PayloadTooLargeError,
    RoundClosedError,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")

_STATUS: list[tuple[type[Exception], grpc.StatusCode]] = [
    (InvalidContributionError, grpc.StatusCode.INVALID_ARGUMENT),
    (BindingMismatchError, grpc.StatusCode.INVALID_ARGUMENT),
    (CryptoError, grpc.StatusCode.INVALID_ARGUMENT),
    (ConfigError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotAllowedError, grpc.StatusCode.PERMISSION_DENIED),
    (RoundClosedError, grpc.StatusCode.FAILED_PRECONDITION),
    (NotReadyError, grpc.StatusCode.FAILED_PRECONDITION),
    (ConflictError, grpc.StatusCode.ALREADY_EXISTS),
    (PayloadTooLargeError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
]
_STATE = {OPEN: pb.ROUND_STATE_OPEN, CLOSED: pb.ROUND_STATE_CLOSED, FAILED: pb.ROUND_STATE_FAILED}
_REVEALED = {SELF_MASK: pb.REVEALED_KIND_SELF_MASK, MASK_KEY: pb.REVEALED_KIND_MASK_KEY}
_REVEALED_KIND = {v: k for k, v in _REVEALED.items()}


_MAX_DETAILS = 256  # grpc-message is percent-encoded: keep it far below the 8 KiB limit


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_DETAILS else text[: _MAX_DETAILS - 3] + "..."


def _abort(context: grpc.ServicerContext, exc: Exception, method: str) -> NoReturn:
    if isinstance(exc, grpc.RpcError) and not context.is_active():
        logger.info("[Coordinator.%s] client went away mid-call", method)
        context.abort(grpc.StatusCode.CANCELLED, "client cancelled")
    for kind, code in _STATUS:
        if isinstance(exc, kind):
            message = _clip(str(exc))
            logger.info("[Coordinator.%s] rejected: %s: %s", method, code.name, message)
            context.abort(code, message)
    logger.exception("[Coordinator.%s] internal error", method)
    context.abort(grpc.StatusCode.INTERNAL, "internal coordinator error")


def peer_identity(context: grpc.ServicerContext) -> tuple[str, str]:
    """``(common name, PEM)`` of the mutually authenticated TLS client certificate."""
    auth = context.auth_context()
    names = auth.get("x509_common_name") or []
    pems = auth.get("x509_pem_cert") or []
    if len(names) != 1 or len(pems) != 1:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required")
    return names[0].decode(), pems[0].decode()


def _receive_stream(
    messages: Iterator[Any], *, chunk_bytes: int, max_bytes: int,
    context: grpc.ServicerContext, check_header: Callable[[Any], None] = lambda _: None,
) -> tuple[Any, bytes]:
    """``(header, payload)`` of a header-then-chunks stream, enforcing size limits."""
    first = next(messages, None)
    if first is None or first.WhichOneof("part") != "header":
        raise InvalidContributionError("the first message must be the header")
    header = first.header
    check_header(header)  # reject before buffering the payload
    limit = min(int(header.payload_bytes), max_bytes)
    if header.payload_bytes > max_bytes:
        raise PayloadTooLargeError(
            f"payload of {header.payload_bytes} bytes exceeds the limit of {max_bytes}")
    buffer = bytearray()
    for message in messages:
        if message.WhichOneof("part") != "chunk":
            raise InvalidContributionError("only chunks may follow the header")
        if len(message.chunk) > chunk_bytes:
            raise InvalidContributionError("chunk larger than the federation's chunk_bytes")
        buffer.extend(message.chunk)
        if len(buffer) > limit:
            raise InvalidContributionError("more payload bytes than the header announced")
    if not context.is_active():  # the call already ended (aborted or cancelled)
        raise InvalidContributionError("the stream did not complete")
    return header, bytes(buffer)


def _chunks(data: bytes, step: int) -> Iterator[bytes]:
    for offset in range(0, len(data), step):
        yield data[offset : offset + step]


def _task_header(entry: TaskEntry) -> pb.TaskHeader:
    return pb.TaskHeader(**{k: v for k, v in asdict(entry).items()})


class CoordinatorServicer(pb_grpc.CoordinatorServicer):
    """Thin gRPC surface; all decisions live in :class:`Aggregator`."""

    def __init__(self, aggregator: Aggregator) -> None:
        self.aggregator = aggregator
        self.config = aggregator.config

    def _run(self, method: str, context: grpc.ServicerContext, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (CoordinatorError, CryptoError, ConfigError) as exc:
            _abort(context, exc, method)
        except Exception as exc:  # noqa: BLE001 - the server must stay up
            _abort(context, exc, method)

    def GetFederation(self, request: pb.GetFederationRequest, context: grpc.ServicerContext) -> pb.GetFederationResponse:  # noqa: N802,E501
        peer_identity(context)
        info = self._run("GetFederation", context, self.aggregator.federation_info)
        rounds = [
            pb.RoundSummary(round_id=r, state=_STATE.get(s, 0), contributions=n)
            for r, s, n in info.pop("rounds")  # type: ignore[attr-defined]
        ]
        return pb.GetFederationResponse(**info, rounds=rounds)  # type: ignore[arg-type]

    def AnnounceKey(self, request: pb.AnnounceKeyRequest, context: grpc.ServicerContext) -> pb.AnnounceKeyResponse:  # noqa: N802,E501
        peer, pem = peer_identity(context)
        self._run("AnnounceKey", context, lambda: self.aggregator.announce_key(
            peer, federation_id=request.federation_id, x25519_public=request.x25519_public,
            signature=request.signature, certificate_pem=request.certificate_pem,
            peer_certificate_pem=pem, mask_x25519_public=request.mask_x25519_public,
            mask_signature=request.mask_signature,
        ))
        return pb.AnnounceKeyResponse()

    def ListKeyAnnouncements(self, request: pb.ListKeyAnnouncementsRequest, context: grpc.ServicerContext) -> pb.ListKeyAnnouncementsResponse:  # noqa: N802,E501
        peer, _ = peer_identity(context)
        rows = self._run("ListKeyAnnouncements", context,
                         lambda: self.aggregator.key_announcements(peer))
        return pb.ListKeyAnnouncementsResponse(announcements=[
            pb.KeyAnnouncement(participant_id=p, x25519_public=k, signature=s, certificate_pem=c,
                               mask_x25519_public=mk, mask_signature=ms)
            for p, k, s, c, mk, ms in rows
        ])

    def PublishKeys(self, request: pb.PublishKeysRequest, context: grpc.ServicerContext) -> pb.PublishKeysResponse:  # noqa: N802,E501
        peer, _ = peer_identity(context)
        fingerprint = self._run("PublishKeys", context, lambda: self.aggregator.publish_keys(
            peer, federation_id=request.federation_id, public_context=request.public_context,
            ckks_params_fingerprint=request.ckks_params_fingerprint,
            model_fingerprint=request.model_fingerprint,
            layer_map_fingerprint=request.layer_map_fingerprint,
            sealed_keys={s.recipient_id: s.sealed_secret_context for s in request.sealed_keys},
            encrypted_secret_context=request.encrypted_secret_context,
            protocol_plan=request.protocol_plan,
        ))
        return pb.PublishKeysResponse(ckks_context_fingerprint=fingerprint)

    def FetchSealedKey(self, request: pb.FetchSealedKeyRequest, context: grpc.ServicerContext) -> pb.FetchSealedKeyResponse:  # noqa: N802,E501
        peer, _ = peer_identity(context)
        holder, cert, fingerprint, blob, encrypted = self._run(
            "FetchSealedKey", context, lambda: self.aggregator.fetch_sealed_key(peer)
        )
        return pb.FetchSealedKeyResponse(
            keyholder_id=holder, keyholder_certificate_pem=cert,
            ckks_context_fingerprint=fingerprint, sealed_secret_context=blob,
            encrypted_secret_context=encrypted,
        )

    def SubmitContribution(self, request_iterator: Iterator[pb.SubmitContributionRequest], context: grpc.ServicerContext) -> pb.SubmitContributionResponse:  # noqa: N802,E501
        peer, _ = peer_identity(context)

        def receive() -> pb.SubmitContributionResponse:
            first = next(request_iterator, None)
            if first is None or first.WhichOneof("part") != "header":
                raise InvalidContributionError("the first message must be the header")
            h = first.header
            header = Header(
                federation_id=h.federation_id, round_id=h.round_id,
                model_fingerprint=h.model_fingerprint,
                layer_map_fingerprint=h.layer_map_fingerprint,
                ckks_context_fingerprint=h.ckks_context_fingerprint,
                vector_length=h.vector_length, num_ciphertexts=h.num_ciphertexts,
                payload_bytes=h.payload_bytes, payload_sha256=h.payload_sha256, kind=h.kind,
                mask_shares=tuple((m.recipient_id, m.sealed) for m in h.mask_shares),
            )
            self.aggregator.check_header(peer, header)
            _, data = _receive_stream(
                itertools.chain([first], request_iterator), chunk_bytes=self.config.chunk_bytes,
                max_bytes=self.config.max_payload_bytes, context=context,
            )
            receipt = self.aggregator.submit(peer, header, data)
            return pb.SubmitContributionResponse(
                round_id=receipt.round_id, payload_sha256=receipt.payload_sha256,
                duplicate=receipt.duplicate, contributions=receipt.contributions,
                state=_STATE.get(receipt.state, 0),
            )

        return self._run("SubmitContribution", context, receive)

    def GetRound(self, request: pb.GetRoundRequest, context: grpc.ServicerContext) -> pb.GetRoundResponse:  # noqa: N802,E501
        peer, _ = peer_identity(context)
        s = self._run("GetRound", context,
                      lambda: self.aggregator.round_status(peer, request.round_id))
        return pb.GetRoundResponse(
            round_id=s.round_id, state=_STATE.get(s.state, 0), contributions=s.contributions,
            quorum=s.quorum, deadline_unix_s=s.deadline_unix_s, vector_length=s.vector_length,
            aggregate_sha256=s.aggregate_sha256, contributed=s.contributed,
        )

    def DepositMaskShares(self, request: pb.DepositMaskSharesRequest, context: grpc.ServicerContext) -> pb.DepositMaskSharesResponse:  # noqa: N802,E501
        peer, _ = peer_identity(context)
        self._run("DepositMaskShares", context, lambda: self.aggregator.deposit_mask_shares(
            peer, federation_id=request.federation_id,
            shares=tuple((m.recipient_id, m.sealed) for m in request.shares)))
        return pb.DepositMaskSharesResponse()

    def GetMaskShares(self, request: pb.GetMaskSharesRequest, context: grpc.ServicerContext) -> pb.GetMaskSharesResponse:  # noqa: N802,E501
        peer, _ = peer_identity(context)
        found = self._run("GetMaskShares", context,
                          lambda: self.aggregator.mask_shares(
                              peer, request.round_id, omit_revealed=request.omit_revealed))
        return pb.GetMaskSharesResponse(
            contributors=found.contributors,
            sealed=[pb.SealedShare(owner_id=o, recipient_id=peer, sealed=b)
                    for o, b in found.sealed],
            revealed=[pb.RevealedShare(revealer_id=r, owner_id=o, kind=_REVEALED[k], share=b)
                      for r, o, k, b in found.revealed],
            retired=found.retired, revealers=found.revealers,
        )

    def RevealMaskShares(self, request: pb.RevealMaskSharesRequest, context: grpc.ServicerContext) -> pb.RevealMaskSharesResponse:  # noqa: N802,E501
        peer, _ = peer_identity(context)

        def reveal() -> int:
            if any(s.kind not in _REVEALED_KIND for s in request.shares):
                raise InvalidContributionError("a revealed share has no kind")
            return self.aggregator.reveal_mask_shares(peer, request.round_id, tuple(
                (s.owner_id, _REVEALED_KIND[s.kind], s.share) for s in request.shares))

        return pb.RevealMaskSharesResponse(revealers=self._run("RevealMaskShares", context,
                                                               reveal))

    def DownloadAggregate(self, request: pb.DownloadAggregateRequest, context: grpc.ServicerContext) -> Iterator[pb.DownloadAggregateResponse]:  # noqa: N802,E501
        peer, _ = peer_identity(context)
        agg = self._run("DownloadAggregate", context,
                        lambda: self.aggregator.aggregate(peer, request.round_id))
        yield pb.DownloadAggregateResponse(header=pb.AggregateHeader(
            round_id=agg.round_id, contributions=agg.contributions,
            vector_length=agg.vector_length, num_ciphertexts=agg.num_ciphertexts,
            payload_bytes=len(agg.payload), payload_sha256=agg.payload_sha256,
            ckks_context_fingerprint=agg.ckks_context_fingerprint, kind=agg.kind,
        ))
        for chunk in _chunks(agg.payload, self.config.chunk_bytes):
            yield pb.DownloadAggregateResponse(chunk=chunk)

    def PutTask(self, request_iterator: Iterator[pb.PutTaskRequest], context: grpc.ServicerContext) -> pb.PutTaskResponse:  # noqa: N802,E501
        peer, _ = peer_identity(context)

        def entry_of(h: pb.TaskHeader) -> TaskEntry:
            return TaskEntry(
                task_id=h.task_id, task_name=h.task_name, model_fingerprint=h.model_fingerprint,
                layer_map_fingerprint=h.layer_map_fingerprint,
                ckks_context_fingerprint=h.ckks_context_fingerprint,
                vector_length=h.vector_length, coefficient_count=h.coefficient_count,
                num_ciphertexts=h.num_ciphertexts, payload_bytes=h.payload_bytes,
                payload_sha256=h.payload_sha256, metadata_json=h.metadata_json,
            )

        def receive() -> pb.PutTaskResponse:
            h, data = _receive_stream(
                request_iterator, chunk_bytes=self.config.chunk_bytes,
                max_bytes=self.config.max_payload_bytes, context=context,
                check_header=lambda h: self.aggregator.check_task_header(peer, entry_of(h)))
            entry = entry_of(h)
            duplicate = self.aggregator.put_task(peer, entry, data)
            return pb.PutTaskResponse(task_id=entry.task_id, duplicate=duplicate)

        return self._run("PutTask", context, receive)

    def GetTask(self, request: pb.GetTaskRequest, context: grpc.ServicerContext) -> Iterator[pb.GetTaskResponse]:  # noqa: N802,E501
        peer, _ = peer_identity(context)
        entry, data = self._run("GetTask", context,
                                lambda: self.aggregator.get_task(peer, request.task_id))
        yield pb.GetTaskResponse(header=_task_header(entry))
        for chunk in _chunks(data, self.config.chunk_bytes):
            yield pb.GetTaskResponse(chunk=chunk)

    def ListTasks(self, request: pb.ListTasksRequest, context: grpc.ServicerContext) -> pb.ListTasksResponse:  # noqa: N802,E501
        peer, _ = peer_identity(context)
        entries = self._run("ListTasks", context, lambda: self.aggregator.list_tasks(peer))
        return pb.ListTasksResponse(tasks=[_task_header(e) for e in entries])
