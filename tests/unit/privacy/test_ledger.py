"""Tests for :mod:`privacy.ledger`: budget enforcement and crash safety."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from privacy.accounting import epsilon_for_history
from privacy.errors import BudgetExhaustedError, ConfigError, PrivacyError
from privacy.ledger import LedgerEntry, PrivacyLedger

DELTA = 1e-5
REPO_ROOT = Path(__file__).resolve().parents[3]


def _open(path: Path, budget: float = 10.0, accountant: str = "rdp") -> PrivacyLedger:
    return PrivacyLedger(path, budget_epsilon=budget, delta=DELTA, accountant=accountant)


def _reserve(
    ledger: PrivacyLedger,
    release_id: str,
    *,
    noise_multiplier: float = 2.0,
    sample_rate: float = 1.0,
    steps: int = 1,
) -> LedgerEntry:
    return ledger.reserve(
        release_id=release_id, description=f"release {release_id}",
        noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps,
        sensitivity="clip_norm=1.0 (whitened)",
    )


def _history(entries: list[LedgerEntry]) -> list[tuple[float, float, int]]:
    return [(e.noise_multiplier, e.sample_rate, e.steps) for e in entries]


def _read(path: Path) -> bytes:
    return path.read_bytes() if path.exists() else b""


# ------------------------------------------------------------------ construction


@pytest.mark.parametrize(
    ("budget", "delta"),
    [(0.0, 1e-5), (-1.0, 1e-5), (1.0, 0.0), (1.0, 1.0), (1.0, -1e-5), (1.0, math.nan)],
)
def test_invalid_config(tmp_path: Path, budget: float, delta: float) -> None:
    with pytest.raises(ConfigError):
        PrivacyLedger(tmp_path / "l.jsonl", budget_epsilon=budget, delta=delta)


def test_nan_budget_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        PrivacyLedger(tmp_path / "l.jsonl", budget_epsilon=math.nan, delta=DELTA)


def test_new_ledger_is_empty_and_creates_parents(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "ledger.jsonl"
    ledger = _open(path)
    assert path.parent.is_dir()
    assert ledger.entries == []
    assert ledger.epsilon_spent() == 0.0


# ----------------------------------------------------------------- reserve/commit


def test_reserve_then_commit_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = _open(path)
    entry = _reserve(ledger, "r1", noise_multiplier=1.5, sample_rate=0.02, steps=50)
    assert not entry.committed
    assert [e.committed for e in ledger.entries] == [False]
    ledger.commit("r1")
    assert [e.committed for e in ledger.entries] == [True]

    reopened = _open(path)
    assert len(reopened.entries) == 1
    got = reopened.entries[0]
    assert got.committed
    assert got.release_id == "r1"
    assert got.description == "release r1"
    assert (got.noise_multiplier, got.sample_rate, got.steps) == (1.5, 0.02, 50)
    assert got.sensitivity == "clip_norm=1.0 (whitened)"
    assert got.reserved_at_unix_s == entry.reserved_at_unix_s
    assert reopened.entries == ledger.entries
    assert reopened.epsilon_spent() == ledger.epsilon_spent()


def test_file_is_json_lines_with_private_mode(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = _open(path)
    _reserve(ledger, "r1")
    ledger.commit("r1")
    lines = path.read_text(encoding="utf-8").splitlines()
    events = [json.loads(line)["event"] for line in lines]
    assert events == ["reserve", "commit"]
    assert path.read_bytes().endswith(b"\n")
    if os.name == "posix":
        assert path.stat().st_mode & 0o077 == 0


def test_reserve_over_budget_raises_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = _open(path, budget=2.0)
    # First release alone is over budget: no file content at all.
    with pytest.raises(BudgetExhaustedError):
        _reserve(ledger, "big", noise_multiplier=0.3)
    assert _read(path) == b""
    assert ledger.entries == []

    _reserve(ledger, "ok", noise_multiplier=4.0)
    before = _read(path)
    entries_before = ledger.entries
    spent_before = ledger.epsilon_spent()
    assert spent_before <= 2.0
    with pytest.raises(BudgetExhaustedError):
        _reserve(ledger, "too-much", noise_multiplier=0.5, sample_rate=0.5, steps=100)
    assert _read(path) == before
    assert ledger.entries == entries_before
    assert ledger.epsilon_spent() == spent_before
    assert [e.release_id for e in _open(path, budget=2.0).entries] == ["ok"]
    # The refused id is free to use for a release that fits.
    _reserve(ledger, "too-much", noise_multiplier=50.0)


def test_zero_noise_release_is_refused_under_finite_budget(tmp_path: Path) -> None:
    ledger = _open(tmp_path / "ledger.jsonl", budget=1e6)
    with pytest.raises(BudgetExhaustedError):
        _reserve(ledger, "plain", noise_multiplier=0.0)


def test_duplicate_release_id_raises(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = _open(path)
    _reserve(ledger, "r1")
    before = _read(path)
    with pytest.raises(PrivacyError) as info:
        _reserve(ledger, "r1", noise_multiplier=9.0)
    assert not isinstance(info.value, BudgetExhaustedError)
    assert _read(path) == before
    # also after reopening, and also once committed
    ledger.commit("r1")
    with pytest.raises(PrivacyError):
        _reserve(_open(path), "r1")


def test_commit_unknown_release_raises(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = _open(path)
    with pytest.raises(PrivacyError):
        ledger.commit("nope")
    assert _read(path) == b""


def test_uncommitted_reservation_counts_after_reopen(tmp_path: Path) -> None:
    # Simulates a kill between the release and its commit record. With sigma=2 full-batch
    # releases at delta=1e-5 (RDP): 1 -> 2.166, 2 -> 3.189, 3 -> 4.011; budget 3.5 fits two.
    path = tmp_path / "ledger.jsonl"
    ledger = _open(path, budget=3.5)
    _reserve(ledger, "done", noise_multiplier=2.0)
    ledger.commit("done")
    _reserve(ledger, "in-flight", noise_multiplier=2.0)
    del ledger

    reopened = _open(path, budget=3.5)
    assert [(e.release_id, e.committed) for e in reopened.entries] == [
        ("done", True), ("in-flight", False),
    ]
    expected = epsilon_for_history([(2.0, 1.0, 1), (2.0, 1.0, 1)], delta=DELTA)
    assert reopened.epsilon_spent() == pytest.approx(expected, rel=1e-12)
    assert reopened.epsilon_spent() > epsilon_for_history([(2.0, 1.0, 1)], delta=DELTA)
    # The in-flight reservation still blocks a release that only fits without it.
    alone = epsilon_for_history([(2.0, 1.0, 1), (2.0, 1.0, 1)], delta=DELTA)
    assert alone <= 3.5
    assert epsilon_for_history([(2.0, 1.0, 1)] * 3, delta=DELTA) > 3.5
    with pytest.raises(BudgetExhaustedError):
        _reserve(reopened, "third", noise_multiplier=2.0)
    # ... and may be committed late.
    reopened.commit("in-flight")
    assert all(e.committed for e in _open(path, budget=3.5).entries)


def test_torn_last_line_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = _open(path)
    _reserve(ledger, "r1")
    ledger.commit("r1")
    _reserve(ledger, "r2")
    intact = path.read_bytes()
    torn_reserve = json.dumps({"event": "reserve", "release_id": "r3"})[:25]
    path.write_bytes(intact + torn_reserve.encode())
    reopened = _open(path)
    assert [(e.release_id, e.committed) for e in reopened.entries] == [
        ("r1", True), ("r2", False),
    ]
    assert reopened.epsilon_spent() == ledger.epsilon_spent()


def test_torn_commit_line_leaves_release_uncommitted(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = _open(path)
    _reserve(ledger, "r1")
    path.write_bytes(path.read_bytes() + b'{"at_unix_s": 1.0, "event": "comm')
    reopened = _open(path)
    assert [(e.release_id, e.committed) for e in reopened.entries] == [("r1", False)]


def test_reservation_after_torn_tail_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = _open(path)
    _reserve(ledger, "r1")
    path.write_bytes(path.read_bytes() + b'{"committed": false, "desc')  # crash mid-write
    after_crash = _open(path)
    _reserve(after_crash, "r2")
    assert [e.release_id for e in _open(path).entries] == ["r1", "r2"]


# -------------------------------------------------------------- real process kill

_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from privacy.ledger import PrivacyLedger

    path, mode = sys.argv[1], sys.argv[2]
    ledger = PrivacyLedger(path, budget_epsilon=3.5, delta=1e-5)
    kw = dict(description="d", noise_multiplier=2.0, sample_rate=1.0, steps=1,
              sensitivity="s")
    ledger.reserve(release_id="committed", **kw)
    ledger.commit("committed")
    ledger.reserve(release_id="killed", **kw)
    print("reserved", flush=True)
    if mode == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    else:
        os._exit(7)
    ledger.commit("killed")  # never reached
    print("unreachable", flush=True)
    """
)


@pytest.mark.parametrize("mode", ["sigkill", "_exit"])
def test_kill_between_reserve_and_commit(tmp_path: Path, mode: str) -> None:
    if mode == "sigkill" and not hasattr(signal, "SIGKILL"):
        pytest.skip("no SIGKILL on this platform")
    path = tmp_path / "ledger.jsonl"
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), mode],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
    )
    assert proc.stdout.strip() == "reserved", proc.stderr
    expected_rc = -signal.SIGKILL if mode == "sigkill" else 7
    assert proc.returncode == expected_rc, proc.stderr

    ledger = _open(path, budget=3.5)
    assert [(e.release_id, e.committed) for e in ledger.entries] == [
        ("committed", True), ("killed", False),
    ]
    spent = ledger.epsilon_spent()
    assert spent == pytest.approx(
        epsilon_for_history([(2.0, 1.0, 1), (2.0, 1.0, 1)], delta=DELTA), rel=1e-12
    )
    with pytest.raises(BudgetExhaustedError):
        _reserve(ledger, "next", noise_multiplier=2.0)
    with pytest.raises(PrivacyError):
        _reserve(ledger, "killed", noise_multiplier=100.0)


# ------------------------------------------------------------------ budget / epsilon


def test_infinite_budget_never_refuses(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = _open(path, budget=math.inf)
    _reserve(ledger, "plain", noise_multiplier=0.0)  # non-private: epsilon = inf
    for i in range(5):
        _reserve(ledger, f"weak-{i}", noise_multiplier=0.1, sample_rate=1.0, steps=1000)
    assert ledger.epsilon_spent() == math.inf
    reopened = _open(path, budget=math.inf)
    assert len(reopened.entries) == 6
    _reserve(reopened, "more", noise_multiplier=0.0)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_epsilon_spent_equals_epsilon_for_history(tmp_path: Path, accountant: str) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = _open(path, budget=50.0, accountant=accountant)
    _reserve(ledger, "vector", noise_multiplier=1.5, sample_rate=1.0, steps=1)
    _reserve(ledger, "calib", noise_multiplier=1.5, sample_rate=0.02, steps=300)
    ledger.commit("vector")
    _reserve(ledger, "extra", noise_multiplier=3.0, sample_rate=0.1, steps=20)
    expected = epsilon_for_history(
        _history(ledger.entries), delta=DELTA, accountant=accountant
    )
    assert ledger.epsilon_spent() == pytest.approx(expected, rel=1e-12)
    assert _open(path, budget=50.0, accountant=accountant).epsilon_spent() == (
        pytest.approx(expected, rel=1e-12)
    )


def test_invalid_accountant_raises_config_error_on_use(tmp_path: Path) -> None:
    ledger = _open(tmp_path / "ledger.jsonl", accountant="bogus")
    with pytest.raises(ConfigError):
        ledger.epsilon_spent()
    with pytest.raises(ConfigError):
        _reserve(ledger, "r1")


_release = st.tuples(
    st.sampled_from([0.5, 1.0, 2.0, 4.0, 8.0]),
    st.sampled_from([0.01, 0.1, 1.0]),
    st.integers(min_value=1, max_value=200),
)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(releases=st.lists(_release, min_size=1, max_size=6), budget=st.sampled_from([1.0, 4.0]))
def test_ledger_never_exceeds_budget(
    tmp_path_factory: pytest.TempPathFactory,
    releases: list[tuple[float, float, int]],
    budget: float,
) -> None:
    path = tmp_path_factory.mktemp("prop") / "ledger.jsonl"
    ledger = _open(path, budget=budget)
    accepted: list[tuple[float, float, int]] = []
    for i, (nm, q, steps) in enumerate(releases):
        projected = epsilon_for_history(accepted + [(nm, q, steps)], delta=DELTA)
        try:
            _reserve(ledger, f"r{i}", noise_multiplier=nm, sample_rate=q, steps=steps)
        except BudgetExhaustedError:
            assert projected > budget
        else:
            assert projected <= budget
            accepted.append((nm, q, steps))
        assert ledger.epsilon_spent() <= budget
    reopened = _open(path, budget=budget)
    assert _history(reopened.entries) == accepted
    assert reopened.entries == ledger.entries
