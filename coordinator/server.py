"""Build and run the coordinator's gRPC server: mutual TLS, health, reflection, deadlines."""

from __future__ import annotations

import logging
import threading
from concurrent import futures

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from proto.fedctx.v1 import fedctx_pb2 as pb

from .aggregator import Aggregator
from .config import CoordinatorConfig
from .errors import InvalidContributionError
from .servicer import CoordinatorServicer
from .store import Store

logger = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Coordinator"].full_name
_UNDECODABLE = object()  # what the lenient deserializer returns for a body that won't parse
_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def _lenient(message_cls):  # type: ignore[no-untyped-def]
    def parse(data: bytes):  # type: ignore[no-untyped-def]
        try:
            return message_cls.FromString(data)
        except DecodeError:
            return _UNDECODABLE
    return parse


def _checked(messages):  # type: ignore[no-untyped-def]
    for message in messages:
        if message is _UNDECODABLE:
            raise InvalidContributionError("a request message does not decode")
        yield message


def _guard(behaviour, client_streaming: bool):  # type: ignore[no-untyped-def]
    def handler(request, context):  # type: ignore[no-untyped-def]
        if client_streaming:
            return behaviour(_checked(request), context)
        if request is _UNDECODABLE:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request message does not decode")
        return behaviour(request, context)
    return handler


def add_coordinator_servicer(servicer: CoordinatorServicer, server: grpc.Server) -> None:
    """Like the generated ``add_CoordinatorServicer_to_server``, but a body that does not
    decode is INVALID_ARGUMENT (gRPC's default is INTERNAL) and never ends a stream early."""
    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name["Coordinator"].methods:
        factory = _FACTORIES[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = factory(
            _guard(getattr(servicer, method.name), method.client_streaming),
            request_deserializer=_lenient(getattr(pb, method.input_type.name)),
            response_serializer=getattr(pb, method.output_type.name).SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


class CoordinatorServer:
    """A running coordinator; ``port`` is the bound port (useful with port 0)."""

    def __init__(self, config: CoordinatorConfig) -> None:
        self.config = config
        self.store = Store(config.state_dir)
        self.aggregator = Aggregator(config, self.store)
        message_limit = config.chunk_bytes + 64 * 1024
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.max_workers),
            options=[
                ("grpc.max_receive_message_length", max(message_limit, 16 * 1024 * 1024)),
                ("grpc.max_send_message_length", max(message_limit, 16 * 1024 * 1024)),
            ],
            # Every participant may poll while uploading: never refuse a full roster.
            maximum_concurrent_rpcs=max(config.max_workers * 8, 4 * len(config.roster) + 32),
        )
        add_coordinator_servicer(CoordinatorServicer(self.aggregator), self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        credentials = grpc.ssl_server_credentials(
            [(config.tls_key.read_bytes(), config.tls_cert.read_bytes())],
            root_certificates=config.tls_ca.read_bytes(),
            require_client_auth=True,
        )
        self.port = self.server.add_secure_port(f"{config.host}:{config.port}", credentials)
        if self.port == 0:
            raise OSError(f"cannot bind {config.host}:{config.port}")
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick_loop, daemon=True, name="round-ticker")

    def _tick_loop(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.aggregator.tick()
            except Exception:  # noqa: BLE001 - the ticker must survive
                logger.exception("[CoordinatorServer] deadline tick failed")

    def start(self) -> CoordinatorServer:
        """Start serving and mark the service healthy."""
        self.server.start()
        self._ticker.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        logger.info("[CoordinatorServer] federation=%s listening on %s:%d",
                    self.config.federation_id, self.config.host, self.port)
        return self

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting calls, let in-flight ones finish for ``grace_s``, close state."""
        self.health.enter_graceful_shutdown()
        self._stop.set()
        self.server.stop(grace_s).wait()
        self.store.close()

    def wait(self) -> None:
        """Block until the server terminates."""
        self.server.wait_for_termination()
