"""Coordinator configuration (TOML or keyword arguments), validated on construction."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from privacy.errors import ConfigError

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True, slots=True)
class CoordinatorConfig:
    """Everything a coordinator needs; no secret CKKS material ever appears here.

    Attributes:
        federation_id: name every contribution must carry.
        roster: participant ids (TLS certificate common names) allowed to contribute.
        keyholder_id: the roster member that creates and seals the CKKS secret context.
        state_dir: SQLite database and ciphertext blobs.
        quorum: contributions needed to close a round at its deadline (default: all).
        round_timeout_s: a round's deadline, counted from its first contribution.
        max_payload_bytes: largest accepted contribution.
        chunk_bytes: chunk size of streamed payloads.
        host / port: bind address (port 0 picks a free port).
        tls_cert / tls_key / tls_ca: server certificate, key and the CA that signs
            participant certificates (mutual TLS is mandatory).
        model_fingerprint / layer_map_fingerprint: optional pins set by the operator;
            otherwise the keyholder's published values are pinned.
        max_workers: gRPC thread pool size.
    """

    federation_id: str
    roster: tuple[str, ...]
    keyholder_id: str
    state_dir: Path
    tls_cert: Path
    tls_key: Path
    tls_ca: Path
    quorum: int = 0
    round_timeout_s: float = 600.0
    max_payload_bytes: int = 256 * 1024 * 1024
    chunk_bytes: int = 1024 * 1024
    host: str = "127.0.0.1"
    port: int = 0
    model_fingerprint: str = ""
    layer_map_fingerprint: str = ""
    max_workers: int = 16
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _ID.match(self.federation_id):
            raise ConfigError(f"federation_id {self.federation_id!r} must match {_ID.pattern}")
        if not self.roster:
            raise ConfigError("roster must name at least one participant")
        for pid in self.roster:
            if not _ID.match(pid):
                raise ConfigError(f"participant id {pid!r} must match {_ID.pattern}")
        if len(set(self.roster)) != len(self.roster):
            raise ConfigError("roster contains duplicates")
        if self.keyholder_id not in self.roster:
            raise ConfigError(f"keyholder_id {self.keyholder_id!r} is not in the roster")
        if self.quorum == 0:
            object.__setattr__(self, "quorum", len(self.roster))
        if not 1 <= self.quorum <= len(self.roster):
            raise ConfigError(f"quorum must be in 1..{len(self.roster)}, got {self.quorum}")
        if self.round_timeout_s <= 0:
            raise ConfigError("round_timeout_s must be > 0")
        if not 1024 <= self.chunk_bytes <= 4 * 1024 * 1024 - 64 * 1024:
            raise ConfigError("chunk_bytes must be in [1 KiB, 4 MiB - 64 KiB]")
        if self.max_payload_bytes < self.chunk_bytes:
            raise ConfigError("max_payload_bytes must be >= chunk_bytes")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port out of range: {self.port}")

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: object) -> CoordinatorConfig:
        """Load a ``[coordinator]`` table from TOML; keyword overrides win (CLI flags)."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read coordinator config {path}: {exc}") from exc
        table = dict(data.get("coordinator", data))
        table.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in fields(cls)}
        unknown = set(table) - known
        if unknown:
            raise ConfigError(f"{path}: unknown coordinator keys {sorted(unknown)}")
        base = path.parent
        for key in ("state_dir", "tls_cert", "tls_key", "tls_ca"):
            if key in table:
                p = Path(str(table[key]))
                table[key] = p if p.is_absolute() else base / p
        if "roster" in table:
            table["roster"] = tuple(table["roster"])  # type: ignore[arg-type]
        try:
            return cls(**table)  # type: ignore[arg-type]
        except TypeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
