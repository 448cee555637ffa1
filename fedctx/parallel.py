"""A grid's cells in parallel processes: ``fedctx experiment --jobs N``.

One cell per process (``fedctx experiment ... --cell KEY``), at most ``jobs`` at a time,
in :meth:`Harness.pending`'s order. A child appends its row to the shared results file
(one write per line, :func:`fedctx.experiment.append_row`) and records its own errors, as
one process does; a child that dies without a row (killed, out of memory) is recorded in
``failures.jsonl`` with its exit status and log. Resuming works as for one process: the
finished cells are the rows in the results file. Each child's output goes to
``<out>/logs/<run key>.log``.

What it is for: a GPU holds several 135M-parameter cells at once (an H200 ran seven, one
per process; a 10-participant cell at 12 records per step peaked at 3-17 GiB,
docs/benchmarks.md), and one process leaves it mostly idle. On a CPU one process already
uses every core.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from privacy.errors import ConfigError

from .experiment import Harness, RunSpec, append_row, describe

#: How often the parent looks at its children.
POLL_S = 0.5


def cell_command(cli_args: Sequence[str]) -> Callable[[str], list[str]]:
    """The child's command for a run key: this interpreter, ``fedctx.cli`` and
    ``cli_args`` (``experiment --config ... --out ...``) with ``--cell KEY``."""
    return lambda key: [sys.executable, "-m", "fedctx.cli", *cli_args, "--cell", key]


def run_in_processes(
    harness: Harness, *, jobs: int, command: Callable[[str], list[str]],
    progress: bool = True, threads_per_job: int = 0,
) -> list[dict[str, object]]:
    """Run the pending cells, ``jobs`` processes at a time; returns all rows.

    ``threads_per_job``: torch/OpenMP threads per child (``OMP_NUM_THREADS``), 0 = the
    usable cores divided by ``jobs`` (at least 1), unless the environment sets it.
    """
    from tqdm.auto import tqdm

    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    queue: list[RunSpec] = harness.prepare()
    logs = harness.out_dir / "logs"
    logs.mkdir(exist_ok=True)
    threads = threads_per_job or max(1, len(os.sched_getaffinity(0)) // jobs)
    env = {"OMP_NUM_THREADS": str(threads), **os.environ}
    running: dict[subprocess.Popen[bytes], tuple[RunSpec, Path, float]] = {}
    try:
        with tqdm(total=len(queue), desc=f"runs ({jobs} processes)", disable=not progress) as bar:
            while queue or running:
                while queue and len(running) < jobs:
                    spec = queue.pop(0)
                    log = logs / f"{spec.key()}.log"
                    with log.open("wb") as out:
                        child = subprocess.Popen(command(spec.key()), stdout=out,
                                                 stderr=subprocess.STDOUT, env=env)
                    running[child] = (spec, log, time.perf_counter())
                time.sleep(POLL_S)
                for child, (spec, log, began) in list(running.items()):
                    if child.poll() is None:
                        continue
                    del running[child]
                    bar.update(1)
                    if spec.key() not in harness.finished() and child.returncode != 0:
                        _record_dead_child(harness, spec, child.returncode, log, began)
    finally:
        for child in running:
            child.kill()
        for child in running:
            child.wait()
    return list(harness.finished().values())


def _record_dead_child(harness: Harness, spec: RunSpec, returncode: int, log: Path,
                       began: float) -> None:
    """A child that exited non-zero without a row: its exit status and log's last line."""
    lines = log.read_text(errors="replace").strip().splitlines()
    append_row(harness.failures_file, {
        **asdict(spec), "run_key": spec.key(),
        "error": f"{describe(spec)}: process exited {returncode}: "
                 f"{lines[-1] if lines else 'no output'} (log: {log})",
        "wall_s": time.perf_counter() - began})
