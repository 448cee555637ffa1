"""``fedctx demo``: a real federation on loopback, every party its own OS process.

Provision a throwaway CA, start a coordinator (free port chosen at run time), start N
participants, each with a disjoint slice of a real labelled data set, and print
zero-shot vs injected vs calibrated accuracy, the privacy spent and the bytes sent.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from participant.config import resolve_vector_source

from .provision import provision


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """Knobs of the demo (CLI flags)."""

    participants: int = 3
    task: str = "bbc"
    model: str = "smollm2-135m"
    device: str = "cpu"
    data_dir: str = ""
    target_epsilon: float = 8.0
    delta: float = 1e-5
    rounds: int = 4
    steps_per_round: int = 12
    batch_size: int = 16
    demonstrations_per_class: int = 8
    max_calibration_records: int = 256
    test_per_class: int = 40
    vector_source: str = "auto"
    dirichlet_alpha: float = 0.0
    #: distributed DP (``[participant.privacy] max_colluders``) when >= 0: masked rounds
    #: of one ``global_adam`` step each, ``rounds * steps_per_round`` of them
    max_colluders: int = -1
    #: with distributed DP: how many participants may drop out (``max_dropouts``; the
    #: coordinator then closes a round at its deadline with ``participants - d``)
    max_dropouts: int = 0
    #: fault injection: SIGKILL the last participant once calibration round k has closed
    #: (0: nobody); needs ``max_dropouts >= 1`` for the others to finish
    drop_after_round: int = 0
    workdir: str = ""
    #: the whole federation's limit, and the coordinator's round deadline unless
    #: ``round_timeout_s`` is set
    timeout_s: float = 1800.0
    round_timeout_s: float = 0.0
    threads_per_process: int = 1


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def _toml(tables: dict[str, dict[str, object]]) -> str:
    lines = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
        lines.append("")
    return "\n".join(lines)


def participant_tables(options: DemoOptions) -> dict[str, dict[str, object]]:
    """Every participant's vector settings (``participant``: to merge into its own table),
    ``[participant.privacy]`` and ``[participant.calibration]`` tables. Under distributed
    DP every DP-SGD step is its own masked round (the noise shares sum only across one
    step's releases), so the demo runs the same number of steps, one per round, under
    the optimiser that allows it, and a private vector is released as a record-weighted
    sum."""
    vector: dict[str, object] = {"vector_source": options.vector_source}
    privacy: dict[str, object] = {"target_epsilon": options.target_epsilon,
                                  "delta": options.delta}
    calibration: dict[str, object] = {"rounds": options.rounds,
                                      "steps_per_round": options.steps_per_round,
                                      "batch_size": options.batch_size}
    if options.max_colluders >= 0:
        privacy["max_colluders"] = options.max_colluders
        if options.max_dropouts:
            privacy["max_dropouts"] = options.max_dropouts
        calibration.update(rounds=options.rounds * options.steps_per_round,
                           steps_per_round=1, optimizer="global_adam")
        vector["vector_weighting"] = "records"
    return {"participant": vector, "participant.privacy": privacy,
            "participant.calibration": calibration}


def _prepare_model(model: str) -> None:
    """Convert the GGUF once, before several processes would race to do it."""
    from participant.model import load_model  # noqa: PLC0415 - heavy import, only here

    load_model(model)


def run_demo(options: DemoOptions, *, out=sys.stdout) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """Run the whole federation; returns the collected reports."""
    if options.drop_after_round and (options.max_colluders < 0 or options.max_dropouts < 1):
        raise ValueError("drop_after_round needs distributed DP with max_dropouts >= 1 "
                         "(else the others cannot finish without the dropped participant)")
    work = Path(options.workdir or tempfile.mkdtemp(prefix="fedctx-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    ids = [f"org{i + 1}" for i in range(options.participants)]
    print(f"fedctx demo: workdir {work}", file=out)
    print(f"  preparing model {options.model!r} (first run converts the GGUF once)", file=out)
    _prepare_model(options.model)
    pki = provision(work / "pki", ids)
    federation_id = f"demo-{int(time.time())}"
    (work / "coordinator.toml").write_text(_toml({"coordinator": {
        "federation_id": federation_id, "roster": ids, "keyholder_id": ids[0],
        "state_dir": str(work / "coordinator-state"), "tls_cert": str(pki.coordinator_cert),
        "tls_key": str(pki.coordinator_key), "tls_ca": str(pki.ca_cert),
        "round_timeout_s": options.round_timeout_s or options.timeout_s,
        "host": "127.0.0.1", "port": 0,
        "quorum": options.participants - options.max_dropouts,
    }}))
    env = {**os.environ, "OMP_NUM_THREADS": str(options.threads_per_process),
           "TOKENIZERS_PARALLELISM": "false"}
    port_file = work / "coordinator.port"
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    coordinator = subprocess.Popen(
        [sys.executable, "-m", "fedctx.cli", "coordinator", "--config",
         str(work / "coordinator.toml"), "--port-file", str(port_file)],
        stdout=(logs / "coordinator.log").open("w"), stderr=subprocess.STDOUT, env=env,
    )
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if coordinator.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"coordinator did not start; see {logs / 'coordinator.log'}")
            time.sleep(0.1)
        port = int(port_file.read_text())
        print(f"  coordinator pid {coordinator.pid} on 127.0.0.1:{port} (mutual TLS)", file=out)
        for index, pid in enumerate(ids):
            cert, key = pki.participants[pid]
            config = work / f"{pid}.toml"
            tables = participant_tables(options)
            config.write_text(_toml({
                "participant": {
                    "participant_id": pid, "coordinator": f"127.0.0.1:{port}",
                    "tls_cert": str(cert), "tls_key": str(key), "tls_ca": str(pki.ca_cert),
                    "state_dir": str(work / pid), "federation_id": federation_id,
                    "task": options.task, "model": options.model, "device": options.device,
                    "data_dir": options.data_dir,
                    "partition_index": index, "num_partitions": options.participants,
                    "dirichlet_alpha": options.dirichlet_alpha,
                    **tables.pop("participant"),
                    "demonstrations_per_class": options.demonstrations_per_class,
                    "max_calibration_records": options.max_calibration_records,
                    "evaluate": index == 0, "test_per_class": options.test_per_class,
                    "seed": index, "results_file": str(work / f"{pid}.json"),
                },
                **tables,
            }))
            processes[pid] = subprocess.Popen(
                [sys.executable, "-m", "fedctx.cli", "participant", "--config", str(config)],
                stdout=(logs / f"{pid}.log").open("w"), stderr=subprocess.STDOUT, env=env,
            )
            print(f"  participant {pid} pid {processes[pid].pid}", file=out)
        source = resolve_vector_source(options.vector_source, model=options.model,
                                       private=not math.isinf(options.target_epsilon))
        rounds = ("vector round -> " if source == "private"
                  else f"{source} vector, no vector round -> ")
        print(f"  running: keys -> {rounds}calibration rounds -> evaluation ...", file=out)
        start = time.monotonic()
        dropped = _wait(processes, options, port=port, pki=pki, logs=logs,
                        round_id=f"calib-{source}-{options.drop_after_round}", out=out)
        elapsed = time.monotonic() - start
    finally:
        for process in [*processes.values(), coordinator]:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
    reports = {pid: json.loads((work / f"{pid}.json").read_text())
               for pid in ids if pid not in dropped}
    print_table(reports, elapsed_s=elapsed, out=out)
    return reports


def _wait(processes: dict[str, subprocess.Popen[bytes]], options: DemoOptions, *, port: int,
          pki, logs: Path, round_id: str, out) -> set[str]:  # type: ignore[no-untyped-def]
    """Wait for every participant; with ``drop_after_round``, SIGKILL the last one once
    ``round_id`` has closed (watched through the coordinator's public round list). Returns
    the participants killed; any other failure raises."""
    from participant.client import CoordinatorClient, TlsFiles  # noqa: PLC0415
    from proto.fedctx.v1 import fedctx_pb2 as pb  # noqa: PLC0415

    victim = list(processes)[-1] if options.drop_after_round else ""
    watcher = None
    if victim:
        cert, key = pki.participants[list(processes)[0]]
        watcher = CoordinatorClient(f"127.0.0.1:{port}", TlsFiles(cert, key, pki.ca_cert))
    dropped: set[str] = set()
    deadline = time.monotonic() + options.timeout_s
    try:
        while any(p.poll() is None for p in processes.values()):
            _raise_on_failure(processes, dropped, logs)  # at once: the others would hang
            if time.monotonic() > deadline:
                raise RuntimeError(f"the federation did not finish in {options.timeout_s:.0f} s")
            if watcher is not None and not dropped and any(
                    r.round_id == round_id and r.state == pb.ROUND_STATE_CLOSED
                    for r in watcher.federation().rounds):
                processes[victim].kill()
                processes[victim].wait()
                dropped.add(victim)
                print(f"  killed participant {victim} (SIGKILL) after {round_id} closed",
                      file=out)
            time.sleep(0.5)
    finally:
        if watcher is not None:
            watcher.close()
    _raise_on_failure(processes, dropped, logs)
    return dropped


def _raise_on_failure(processes: dict[str, subprocess.Popen[bytes]], dropped: set[str],
                      logs: Path) -> None:
    """Raise if a participant other than the dropped ones exited with an error."""
    for pid, process in processes.items():
        if pid not in dropped and process.poll() not in (None, 0):
            raise RuntimeError(f"participant {pid} failed; see {logs / (pid + '.log')}")


def print_table(reports: dict[str, dict], *, elapsed_s: float, out=sys.stdout) -> None:  # type: ignore[no-untyped-def,type-arg]
    """The demo's summary table."""
    first = next(iter(reports.values()))
    scores = first["scores"]
    dropped = sorted({p for r in reports.values() for p in r.get("dropped_participants", [])
                      if p not in reports})
    size = len(reports) + len(dropped)  # the federation's, the dropped included
    print("", file=out)
    print(f"task {first['task']}: {scores['zero_shot']['n']} class-balanced test queries, "
          f"{size} participants" + (f" ({len(dropped)} dropped out)" if dropped else "")
          + f", vector source {first['vector_source']}", file=out)
    print(f"{'method':<34}{'accuracy':>10}{'macro-F1':>10}", file=out)
    vector = "federated vector" if first["vector_source"] == "private" else \
        f"{first['vector_source']} vector"
    names = {"zero_shot": "zero-shot (no injection)",
             "injected_uncalibrated": f"{vector}, initial coeffs",
             "injected_calibrated": f"{vector}, calibrated"}
    for key, label in names.items():
        s = scores[key]
        print(f"{label:<34}{100 * s['accuracy']:>9.1f}%{100 * s['macro_f1']:>9.1f}%", file=out)
    print("", file=out)
    eps = first["target_epsilon"]
    budget = "no privacy" if math.isinf(eps) else f"target epsilon {eps:g}"
    print(f"privacy: {budget}, delta {first['delta']:g}, noise multiplier "
          f"{first['noise_multiplier']:.3f} (Opacus RDP)", file=out)
    if first.get("max_colluders", -1) >= 0:
        print(f"distributed DP: masked rounds, the budget holds while at most "
              f"{first['max_colluders']} of {size} participants collude with the "
              f"coordinator; each added {first['noise_share']:.3f} (epsilon "
              f"{max(r['epsilon_if_more_collude'] for r in reports.values()):.3g} if more "
              f"collude); the fixed point adds {first['delta_discretization']:.1e} to delta",
              file=out)
    if first.get("max_dropouts", 0):
        print(f"dropout recovery: up to {first['max_dropouts']} may drop out (each share "
              f"sized for that); dropped: {', '.join(dropped) or 'none'}", file=out)
    print(f"{'participant':<14}{'records':>9}{'demos':>7}{'epsilon spent':>15}{'bytes sent':>14}",
          file=out)
    for pid, r in reports.items():
        demos = r["demonstrations"] if r["vector_source"] == "private" else "-"  # unused else
        print(f"{pid:<14}{r['records']:>9}{demos:>7}{r['epsilon_spent']:>15.3f}"
              f"{r['bytes_sent']:>14,}", file=out)
    print(f"\nfederation finished in {elapsed_s:.0f} s", file=out)
