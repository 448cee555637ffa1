"""CKKS encryption and decryption over worker processes give what one process gives."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest

from privacy import ckks
from privacy.ckks_workers import MAX_WORKERS, CkksWorkers
from privacy.errors import CiphertextError, ConfigError, CryptoError, PrecisionError

SLOTS = ckks.CkksParams().slot_count


@pytest.fixture(scope="module")
def secret() -> object:
    return ckks.create_secret_context(ckks.CkksParams())


@pytest.fixture(scope="module")
def workers(secret: object) -> object:
    with CkksWorkers(secret, workers=2) as pool:  # type: ignore[arg-type]
        yield pool


@pytest.mark.parametrize("length", [1, SLOTS, 2 * SLOTS + 1, 5 * SLOTS - 3])
def test_workers_encrypt_and_decrypt_like_one_process(
    secret: object, workers: CkksWorkers, length: int
) -> None:
    values = np.random.default_rng(length).normal(0.0, 2.0, length)
    blobs = workers.encrypt(values)
    assert len(blobs) == ckks.ciphertext_count(length, params=ckks.CkksParams())
    # Each blob is a seeded ciphertext of its chunk, in order: the whole-vector checks pass.
    public = ckks.load_public_context(ckks.serialize_public_context(secret))  # type: ignore[arg-type]
    ckks.validate_ciphertexts(public, blobs, expected_length=length)
    serial = ckks.decrypt_vector(secret, blobs, length=length)  # type: ignore[arg-type]
    np.testing.assert_allclose(serial, values, atol=1e-6)
    assert sum(map(len, blobs)) == sum(map(len, ckks.encrypt_vector(secret, values)))  # type: ignore[arg-type]
    # Decryption is deterministic: the workers return exactly what one process returns.
    np.testing.assert_array_equal(workers.decrypt(blobs, length=length), serial)


def test_one_worker_runs_in_this_process(secret: object) -> None:
    with CkksWorkers(secret, workers=1) as pool:  # type: ignore[arg-type]
        assert pool._pool is None
        values = np.linspace(-1.0, 1.0, SLOTS + 5)
        np.testing.assert_allclose(
            pool.decrypt(pool.encrypt(values), length=values.size), values, atol=1e-6)


def test_workers_report_errors_with_their_types(secret: object, workers: CkksWorkers) -> None:
    with pytest.raises(ConfigError):
        workers.encrypt(np.array([1.0, np.nan]))
    with pytest.raises(PrecisionError):
        workers.encrypt(np.full(3 * SLOTS, 1e12))
    with pytest.raises(ConfigError):
        workers.encrypt(np.ones((2, 3)))
    blobs = workers.encrypt(np.ones(2 * SLOTS + 1))
    with pytest.raises((CiphertextError, ConfigError)):
        workers.decrypt(blobs, length=2 * SLOTS + 1 + SLOTS)
    with pytest.raises(CiphertextError):
        workers.decrypt([blobs[0], b"garbage", blobs[2]], length=2 * SLOTS + 1)
    # The pool survives bad input.
    np.testing.assert_allclose(workers.decrypt(blobs, length=2 * SLOTS + 1), 1.0, atol=1e-6)


@pytest.mark.parametrize("count", [0, MAX_WORKERS + 1, True, 2.0])
def test_worker_count_is_checked(secret: object, count: object) -> None:
    with pytest.raises(ConfigError):
        CkksWorkers(secret, workers=count)  # type: ignore[arg-type]


def test_workers_need_the_secret_context(secret: object) -> None:
    public = ckks.load_public_context(ckks.serialize_public_context(secret))  # type: ignore[arg-type]
    with pytest.raises(CryptoError):
        CkksWorkers(public, workers=2)


def test_close_stops_the_processes_and_is_idempotent(secret: object) -> None:
    before = set(multiprocessing.active_children())
    pool = CkksWorkers(secret, workers=2)  # type: ignore[arg-type]
    pool.encrypt(np.ones(3 * SLOTS))
    started = set(multiprocessing.active_children()) - before
    assert len(started) == 2
    pool.close()
    pool.close()
    assert pool._pool is None
    assert not started & set(multiprocessing.active_children())
    assert all(not p.is_alive() for p in started)


def test_a_dead_worker_is_a_crypto_error_and_the_next_call_still_works(secret: object) -> None:
    pool = CkksWorkers(secret, workers=2)  # type: ignore[arg-type]
    values = np.linspace(-1.0, 1.0, 3 * SLOTS)
    pool.encrypt(values)
    assert pool._pool is not None
    for process in list(pool._pool._processes.values()):
        process.kill()
        process.join()
    with pytest.raises(CryptoError, match="worker process died"):
        pool.encrypt(values)
    # The pool is gone; the same object now works in this process.
    np.testing.assert_allclose(pool.decrypt(pool.encrypt(values), length=values.size), values,
                               atol=1e-6)
    pool.close()
