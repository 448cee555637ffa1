"""CKKS encryption and decryption spread over worker processes.

TenSEAL's bindings hold Python's GIL, so threads do not encrypt ciphertexts in parallel
(measured: two threads took what one took); processes do. Every ciphertext of a vector
is independent, so each worker takes a contiguous run of ``slot_count``-aligned chunks:
the blobs are exactly those :func:`privacy.ckks.encrypt_vector` makes for the whole
vector, and decryption gives back the same values.

Each worker loads the secret context once, from bytes sent through the pool's pipe when
it starts (never a file); workers are spawned (not forked) so they inherit no model, no
torch threads and no open sockets, and they exit with :meth:`CkksWorkers.close`.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from types import TracebackType

import numpy as np
import tenseal as ts

from privacy import ckks
from privacy.errors import ConfigError, CryptoError

__all__ = ["CkksWorkers", "MAX_WORKERS"]

#: More processes than this gain nothing for context-vector sizes (17-128 ciphertexts).
MAX_WORKERS = 64

_WORKER_CONTEXT: ts.Context | None = None


def _start_worker(secret_context_bytes: bytes) -> None:
    global _WORKER_CONTEXT
    _WORKER_CONTEXT = ckks.load_secret_context(secret_context_bytes)


def _ready() -> None:
    """A no-op task: submitting one per worker starts the processes in the background."""


def _encrypt_part(values: np.ndarray) -> list[bytes]:
    assert _WORKER_CONTEXT is not None
    return ckks.encrypt_vector(_WORKER_CONTEXT, values)


def _decrypt_part(blobs: list[bytes], length: int) -> np.ndarray:
    assert _WORKER_CONTEXT is not None
    return ckks.decrypt_vector(_WORKER_CONTEXT, blobs, length=length)


class CkksWorkers:
    """Encrypt and decrypt vectors with ``workers`` processes (1: in this process).

    Use as a context manager, or call :meth:`close`. Not for the coordinator: it needs the
    secret context.
    """

    def __init__(self, secret_context: ts.Context, *, workers: int) -> None:
        """Start ``workers`` processes, or none when ``workers == 1``.

        Raises:
            ConfigError: ``workers`` outside ``1..MAX_WORKERS``.
            CryptoError: ``secret_context`` holds no secret key.
        """
        if isinstance(workers, bool) or not isinstance(workers, int) \
                or not 1 <= workers <= MAX_WORKERS:
            raise ConfigError(f"workers must be an int in 1..{MAX_WORKERS}, got {workers!r}")
        if not isinstance(secret_context, ts.Context) or not secret_context.has_secret_key():
            raise CryptoError("CKKS workers need the secret context")
        self._context = secret_context
        self._slots = ckks.slot_count(secret_context)
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        if workers > 1:
            self._pool = ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=(ckks.serialize_secret_context(secret_context),),
            )
            for _ in range(workers):
                self._pool.submit(_ready)

    def _runs(self, count: int) -> list[tuple[int, int]]:
        """``[start, stop)`` chunk indices, one contiguous run per worker that gets any."""
        parts = min(self.workers, count)
        bounds = [round(i * count / parts) for i in range(parts + 1)]
        return list(zip(bounds[:-1], bounds[1:], strict=True))

    def encrypt(self, values: np.ndarray) -> list[bytes]:
        """:func:`privacy.ckks.encrypt_vector` of ``values`` (seeded where possible).

        Raises:
            The errors of :func:`privacy.ckks.encrypt_vector`.
        """
        if self._pool is None:
            return ckks.encrypt_vector(self._context, values)
        arr = np.asarray(values)
        if arr.ndim != 1 or arr.size == 0:
            raise ConfigError("values must be a non-empty 1-D array")
        count = -(-arr.size // self._slots)
        parts = [arr[a * self._slots: b * self._slots] for a, b in self._runs(count)]
        return [blob for run in self._map(_encrypt_part, parts) for blob in run]

    def decrypt(self, blobs: list[bytes], *, length: int) -> np.ndarray:
        """:func:`privacy.ckks.decrypt_vector` of ``blobs``: ``[length]`` float64.

        Raises:
            The errors of :func:`privacy.ckks.decrypt_vector`.
        """
        if self._pool is None or isinstance(length, bool) or not isinstance(length, int) \
                or length < 1 or not isinstance(blobs, list) \
                or len(blobs) != -(-length // self._slots):
            # One process, or arguments decrypt_vector will reject with its own message.
            return ckks.decrypt_vector(self._context, blobs, length=length)
        runs = self._runs(len(blobs))
        sizes = [min(b * self._slots, length) - a * self._slots for a, b in runs]
        return np.concatenate(self._map(_decrypt_part, [blobs[a:b] for a, b in runs], sizes))

    def _map(self, fn: Callable[..., object], *args: Iterable[object]) -> list:  # type: ignore[type-arg]
        assert self._pool is not None
        try:
            return list(self._pool.map(fn, *args))
        except BrokenProcessPool:
            broken, self._pool = self._pool, None  # later calls run in this process
            broken.shutdown(wait=False, cancel_futures=True)
            raise CryptoError("a CKKS worker process died; nothing was returned") from None

    def close(self) -> None:
        """Stop the worker processes (idempotent); later calls run in this process."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> CkksWorkers:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
