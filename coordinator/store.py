"""Durable coordinator state: SQLite (WAL, synchronous=FULL) plus content-addressed blobs.

A blob is written to a temporary file, fsynced, renamed into place and its folder
fsynced *before* the row that references it is committed, so a ``kill -9`` at any point
leaves either no trace of a contribution or a complete, digest-verified one.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS key_announcements (
    participant_id TEXT PRIMARY KEY, x25519_public BLOB NOT NULL,
    signature BLOB NOT NULL, certificate_pem TEXT NOT NULL, announced_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS sealed_keys (
    recipient_id TEXT PRIMARY KEY, blob_sha256 TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rounds (
    round_id TEXT PRIMARY KEY, state TEXT NOT NULL, kind TEXT NOT NULL,
    vector_length INTEGER NOT NULL, num_ciphertexts INTEGER NOT NULL,
    opened_at REAL NOT NULL, deadline REAL NOT NULL, closed_at REAL,
    aggregate_sha256 TEXT, contributions_in_aggregate INTEGER);
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY, header_json TEXT NOT NULL, blob_sha256 TEXT NOT NULL,
    stored_by TEXT NOT NULL, stored_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS mask_keys (
    participant_id TEXT PRIMARY KEY, x25519_public BLOB NOT NULL, signature BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS mask_shares (
    round_id TEXT NOT NULL, owner_id TEXT NOT NULL, recipient_id TEXT NOT NULL,
    sealed BLOB NOT NULL, PRIMARY KEY (round_id, owner_id, recipient_id));
CREATE TABLE IF NOT EXISTS revealed_shares (
    round_id TEXT NOT NULL, revealer_id TEXT NOT NULL, owner_id TEXT NOT NULL,
    kind TEXT NOT NULL, share BLOB NOT NULL, PRIMARY KEY (round_id, revealer_id, owner_id));
CREATE TABLE IF NOT EXISTS contributions (
    round_id TEXT NOT NULL, participant_id TEXT NOT NULL, payload_sha256 TEXT NOT NULL,
    payload_bytes INTEGER NOT NULL, received_at REAL NOT NULL,
    PRIMARY KEY (round_id, participant_id));
"""


@dataclass(frozen=True, slots=True)
class RoundRow:
    """A round as stored."""

    round_id: str
    state: str
    kind: str
    vector_length: int
    num_ciphertexts: int
    opened_at: float
    deadline: float
    closed_at: float | None
    aggregate_sha256: str | None
    contributions_in_aggregate: int | None


class Store:
    """Thread-safe access to the coordinator's database and blob folder."""

    def __init__(self, state_dir: str | Path) -> None:
        self.state_dir = Path(state_dir)
        self.blob_dir = self.state_dir / "blobs"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            self.state_dir / "coordinator.sqlite3", check_same_thread=False,
            isolation_level=None,
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A serialised write transaction (BEGIN IMMEDIATE ... COMMIT / ROLLBACK)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        """Run a read query."""
        with self._lock:
            return list(self._db.execute(sql, params).fetchall())

    # -- blobs -------------------------------------------------------------------
    def put_blob(self, data: bytes) -> str:
        """Durably store ``data``; returns its SHA-256 hex (the blob's name)."""
        digest = hashlib.sha256(data).hexdigest()
        final = self.blob_dir / digest
        if final.exists() and final.stat().st_size == len(data):
            return digest
        tmp = self.blob_dir / f".{digest}.{os.getpid()}.{threading.get_ident()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        dir_fd = os.open(self.blob_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return digest

    def get_blob(self, digest: str) -> bytes:
        """Read a blob and verify its digest."""
        data = (self.blob_dir / digest).read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise OSError(f"blob {digest} is corrupt on disk")
        return data

    # -- meta --------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        """A stored federation-level value."""
        rows = self.query("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    # -- rounds ------------------------------------------------------------------
    def get_round(self, round_id: str) -> RoundRow | None:
        """One round, or ``None``."""
        rows = self.query("SELECT * FROM rounds WHERE round_id = ?", (round_id,))
        return RoundRow(*rows[0]) if rows else None  # type: ignore[arg-type]

    def list_rounds(self) -> list[RoundRow]:
        """All rounds in opening order."""
        rows = self.query("SELECT * FROM rounds ORDER BY opened_at")
        return [RoundRow(*r) for r in rows]  # type: ignore[arg-type]

    def contributions(self, round_id: str) -> list[tuple[str, str]]:
        """``(participant_id, payload_sha256)`` of a round, in arrival order."""
        rows = self.query(
            "SELECT participant_id, payload_sha256 FROM contributions WHERE round_id = ? "
            "ORDER BY received_at, participant_id", (round_id,),
        )
        return [(str(p), str(d)) for p, d in rows]


def now() -> float:
    """Wall-clock seconds (one place to patch in tests)."""
    return time.time()
