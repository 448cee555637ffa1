"""A participant's persistent, crash-safe privacy ledger.

Write-ahead discipline: a release is *reserved* (appended and fsynced) before anything
leaves the participant, and *committed* after the upload succeeded. A reservation that
was never committed (the process died in between) still counts as spent: the ledger
can over-count, never under-count. The file is JSON Lines; a torn final line from a
crash is ignored (its release cannot have happened, since reservation precedes release).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .accounting import epsilon_for_history
from .errors import BudgetExhaustedError, ConfigError, PrivacyError


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One release of a Gaussian mechanism on the participant's records."""

    release_id: str
    description: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    sensitivity: str
    reserved_at_unix_s: float
    committed: bool = False


class PrivacyLedger:
    """Budget-enforcing record of every release for one (data set, task) scope.

    Args:
        path: JSONL file (created with its parent folders).
        budget_epsilon: refuse releases past this epsilon; ``math.inf`` for a
            non-private run (releases are still recorded).
        delta: delta of the budget.
        accountant: Opacus accountant, ``"rdp"`` or ``"prv"``.
    """

    def __init__(
        self, path: str | Path, *, budget_epsilon: float, delta: float, accountant: str = "rdp"
    ) -> None:
        if not budget_epsilon > 0 or not 0 < delta < 1:  # also rejects NaN
            raise ConfigError("budget_epsilon must be > 0 (inf allowed) and delta in (0, 1)")
        self.path = Path(path)
        self.budget_epsilon = budget_epsilon
        self.delta = delta
        self.accountant = accountant
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._entries: dict[str, LedgerEntry] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            # A torn tail from a crash: cut it so the next append starts on a fresh line.
            keep = raw.rfind(b"\n") + 1
            with self.path.open("r+b") as handle:
                handle.truncate(keep)
                handle.flush()
                os.fsync(handle.fileno())
            raw = raw[:keep]
        for line in raw.decode("utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # torn tail after a crash: that release never left
            if record.get("event") == "reserve":
                fields = {k: record[k] for k in LedgerEntry.__dataclass_fields__ if k in record}
                entry = LedgerEntry(**fields)
                self._entries[entry.release_id] = entry
            elif record.get("event") == "commit" and record["release_id"] in self._entries:
                old = self._entries[record["release_id"]]
                self._entries[old.release_id] = LedgerEntry(
                    **{**asdict(old), "committed": True}
                )

    def _append(self, record: dict[str, object]) -> None:
        line = json.dumps(record, sort_keys=True) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    @property
    def entries(self) -> list[LedgerEntry]:
        """Every reserved release, committed or not, in order."""
        return list(self._entries.values())

    def _history(self, extra: list[LedgerEntry]) -> list[tuple[float, float, int]]:
        return [(e.noise_multiplier, e.sample_rate, e.steps) for e in self.entries + extra]

    def epsilon_spent(self) -> float:
        """Epsilon at ``delta`` of every reserved release (uncommitted ones included)."""
        return epsilon_for_history(
            self._history([]), delta=self.delta, accountant=self.accountant
        )

    def reserve(
        self,
        *,
        release_id: str,
        description: str,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        sensitivity: str,
    ) -> LedgerEntry:
        """Record a release before it happens; refuse it if it would exceed the budget.

        Raises:
            BudgetExhaustedError: the composed epsilon would exceed ``budget_epsilon``.
            PrivacyError: ``release_id`` was already used.
        """
        if release_id in self._entries:
            raise PrivacyError(f"release {release_id!r} is already in the ledger {self.path}")
        entry = LedgerEntry(
            release_id=release_id, description=description,
            noise_multiplier=float(noise_multiplier), sample_rate=float(sample_rate),
            steps=int(steps), sensitivity=sensitivity, reserved_at_unix_s=time.time(),
        )
        projected = epsilon_for_history(
            self._history([entry]), delta=self.delta, accountant=self.accountant
        )
        if projected > self.budget_epsilon and not math.isinf(self.budget_epsilon):
            raise BudgetExhaustedError(
                f"release {release_id!r} would raise epsilon to {projected:.3f} "
                f"(budget {self.budget_epsilon:g} at delta={self.delta:g}, "
                f"spent {self.epsilon_spent():.3f}); nothing was sent. Ledger: {self.path}"
            )
        self._append({"event": "reserve", **asdict(entry)})
        self._entries[release_id] = entry
        return entry

    def commit(self, release_id: str) -> None:
        """Mark a reserved release as sent."""
        if release_id not in self._entries:
            raise PrivacyError(f"cannot commit unknown release {release_id!r}")
        self._append({"event": "commit", "release_id": release_id, "at_unix_s": time.time()})
        old = self._entries[release_id]
        self._entries[release_id] = LedgerEntry(**{**asdict(old), "committed": True})
