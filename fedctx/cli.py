"""The ``fedctx`` command: provision, coordinator, participant, demo, infer, privacy, status."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import threading
from pathlib import Path

from privacy.errors import FedCtxError


def _cmd_provision(args: argparse.Namespace) -> int:
    from .provision import provision

    done = provision(args.out, args.participants, days=args.days,
                     server_names=tuple(args.server_name))
    print(f"CA {done.ca_cert}\ncoordinator {done.coordinator_cert}")
    for pid, (cert, _) in done.participants.items():
        print(f"participant {pid}: {cert}")
    return 0


def _cmd_coordinator(args: argparse.Namespace) -> int:
    from coordinator.config import CoordinatorConfig
    from coordinator.server import CoordinatorServer

    config = CoordinatorConfig.from_toml(args.config, port=args.port, host=args.host)
    server = CoordinatorServer(config).start()
    if args.port_file:
        tmp = Path(args.port_file + ".tmp")
        tmp.write_text(str(server.port))
        tmp.replace(args.port_file)
    print(f"coordinator for {config.federation_id} on {config.host}:{server.port}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace_s=args.grace_s)
    return 0


def _cmd_participant(args: argparse.Namespace) -> int:
    import torch

    from participant.config import ParticipantConfig
    from participant.federation import Participant

    if args.threads:
        torch.set_num_threads(args.threads)
    config = ParticipantConfig.from_toml(args.config, results_file=args.results)
    participant = Participant(config)
    try:
        report = participant.run()
    finally:
        participant.close()
    print(json.dumps({"participant": report.participant_id, "scores": report.scores,
                      "epsilon_spent": report.epsilon_spent, "bytes_sent": report.bytes_sent}))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DemoOptions, run_demo

    run_demo(DemoOptions(
        participants=args.participants, task=args.task, model=args.model, device=args.device,
        data_dir=args.data_dir, target_epsilon=args.epsilon, rounds=args.rounds,
        steps_per_round=args.steps_per_round, vector_source=args.vector_source,
        dirichlet_alpha=args.dirichlet_alpha, workdir=args.workdir,
        test_per_class=args.test_per_class, max_colluders=args.max_colluders,
        max_dropouts=args.max_dropouts, drop_after_round=args.drop_after_round,
        round_timeout_s=args.round_timeout_s,
    ))
    return 0


def _cmd_experiment(args: argparse.Namespace) -> int:
    from .experiment import ExperimentConfig, Harness, describe, plan_runs
    from .report import load_rows, markdown, plot

    config = ExperimentConfig.from_toml(args.config)
    if args.device:
        config = dataclasses.replace(config, device=args.device)
    if args.tasks:  # a subset, e.g. one task per process on a GPU; run keys are unchanged
        unknown = sorted(set(args.tasks) - set(config.tasks))
        if unknown:
            raise FedCtxError(f"--tasks {unknown} not in {args.config}'s tasks "
                              f"{list(config.tasks)}")
        config = dataclasses.replace(config, tasks=tuple(args.tasks))
    out = Path(args.out or f"runs/{config.name}")
    if args.plan:
        harness = Harness(config, out)
        pending, cells = harness.pending(), len(plan_runs(config))
        print(f"{args.config}: {cells} cells, {cells - len(pending)} done in "
              f"{harness.results_file}, {len(pending)} to run, in this order:")
        for number, spec in enumerate(pending, 1):
            print(f"{number:4d}. {describe(spec)}")
        return 0
    if args.cell:  # one cell, as a child of --jobs: no report (the parent writes it)
        keys = {spec.key() for spec in plan_runs(config)}
        if args.cell not in keys:
            raise FedCtxError(f"--cell {args.cell} is not a cell of {args.config}")
        Harness(config, out).run(progress=False, keys=frozenset({args.cell}))
        return 0
    if args.report_only:
        rows = load_rows(out / "results.jsonl")
    elif args.jobs > 1:
        from .parallel import cell_command, run_in_processes

        child = ["experiment", "--config", args.config, "--out", str(out)]
        child += ["--device", args.device] if args.device else []
        rows = run_in_processes(Harness(config, out), jobs=args.jobs,
                                command=cell_command(child))
    else:
        rows = Harness(config, out).run()
    command = f"fedctx experiment --config {args.config} --out {out}"
    text = markdown(rows, command=command)
    (out / "report.md").write_text(text)
    plots = plot(rows, out)
    print(text)
    print(f"results: {out / 'results.jsonl'}; report: {out / 'report.md'}; plots: "
          f"{[str(p) for p in plots] or 'none (pip install matplotlib)'}")
    return 0


def _cmd_infer(args: argparse.Namespace) -> int:
    import torch

    from participant.evaluation import predict
    from participant.folding import fold_by_default, fold_context
    from participant.layers import layer_map_fingerprint, resolve_layer_sites
    from participant.model import load_model
    from participant.tasks import load_task

    saved = torch.load(args.calibrated, weights_only=True)
    task = load_task(args.task or saved["task"])
    lm = load_model(args.model, device=args.device)
    sites = resolve_layer_sites(lm.model)
    if (saved["model_fingerprint"] != lm.fingerprint
            or saved["layer_map"] != layer_map_fingerprint(sites)):
        raise FedCtxError("the calibrated task was made for another model or layer map")
    texts = args.text or [line.strip() for line in sys.stdin if line.strip()]
    vector, coefficients = saved["vector"], saved["coefficients"]
    if args.injection == "fold" or (
            args.injection == "auto" and fold_by_default(sites.model_type, lm.device)):
        # checked against the hooks on a probe before it is kept (participant/folding.py)
        fold_context(lm.model, sites, vector=vector, coefficients=coefficients)
        print("injection: folded into the output projections", file=sys.stderr)
        labels = predict(lm, sites, task, texts, label_bias=saved.get("label_bias"))
    else:
        print("injection: forward hooks", file=sys.stderr)
        labels = predict(lm, sites, task, texts, vector=vector, coefficients=coefficients,
                         label_bias=saved.get("label_bias"))
    for text, label in zip(texts, labels, strict=True):
        print(f"{task.labels[label]}\t{text}")
    return 0


def _cmd_privacy_report(args: argparse.Namespace) -> int:
    from privacy.ledger import PrivacyLedger

    ledger = PrivacyLedger(args.ledger, budget_epsilon=args.budget, delta=args.delta,
                           accountant=args.accountant)
    print(f"ledger {args.ledger} (delta {args.delta:g}, {args.accountant} accountant)")
    print(f"{'release':<40}{'sigma':>8}{'q':>8}{'steps':>7}{'state':>11}")
    for e in ledger.entries:
        state = "sent" if e.committed else "reserved"
        print(f"{e.release_id:<40}{e.noise_multiplier:>8.3f}{e.sample_rate:>8.4f}"
              f"{e.steps:>7}{state:>11}")
    spent = ledger.epsilon_spent()
    print(f"epsilon spent: {'inf (non-private)' if math.isinf(spent) else f'{spent:.4f}'}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from participant.client import CoordinatorClient, TlsFiles

    with CoordinatorClient(args.coordinator, TlsFiles(Path(args.cert), Path(args.key),
                                                      Path(args.ca))) as client:
        info = client.federation()
    print(f"federation {info.federation_id} ({info.protocol_version}); roster "
          f"{list(info.roster)}; keyholder {info.keyholder_id}; quorum {info.quorum}")
    print(f"keys published: {'yes' if info.ckks_context_fingerprint else 'no'}")
    for r in info.rounds:
        print(f"  round {r.round_id}: state {r.state} contributions {r.contributions}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by the docs)."""
    parser = argparse.ArgumentParser(prog="fedctx", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("provision", help="create a throwaway CA and TLS certificates")
    p.add_argument("--out", required=True, help="folder for the CA, server and participant keys")
    p.add_argument("--participants", nargs="+", required=True, help="participant ids (CNs)")
    p.add_argument("--days", type=int, default=30, help="certificate validity (default 30)")
    p.add_argument("--server-name", nargs="+", default=["localhost", "127.0.0.1"],
                   help="DNS names / IPs in the coordinator's certificate")
    p.set_defaults(func=_cmd_provision)

    p = sub.add_parser("coordinator", help="run a coordinator")
    p.add_argument("--config", required=True, help="TOML with a [coordinator] table")
    p.add_argument("--host", help="override the config's listen address")
    p.add_argument("--port", type=int, help="override the config's port (0 = any free port)")
    p.add_argument("--port-file", help="write the bound port here (useful with port 0)")
    p.add_argument("--grace-s", type=float, default=10.0,
                   help="on SIGINT / SIGTERM, seconds in-flight calls get to finish")
    p.set_defaults(func=_cmd_coordinator)

    p = sub.add_parser("participant", help="join a federation as a participant")
    p.add_argument("--config", required=True,
                   help="TOML with [participant], [participant.privacy], [participant.calibration]")
    p.add_argument("--results",
                   help="write the final report (accuracy, epsilon, bytes) as JSON here")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.set_defaults(func=_cmd_participant)

    p = sub.add_parser("demo", help="a real federation on loopback (coordinator + participants)")
    p.add_argument("--participants", type=int, default=3, help="participant processes")
    p.add_argument("--task", default="bbc", help="built-in task name or task .toml")
    p.add_argument("--model", default="smollm2-135m", help="alias, folder, .gguf or HF id")
    p.add_argument("--device", default="cpu", help="where the model runs: cpu, cuda, cuda:N, mps")
    p.add_argument("--data-dir", default="", help="folder with train/test .jsonl or .csv")
    p.add_argument("--epsilon", type=float, default=8.0, help="per-participant budget; inf = off")
    p.add_argument("--rounds", type=int, default=4, help="federated calibration rounds")
    p.add_argument("--steps-per-round", type=int, default=12,
                   help="local DP-SGD steps between two secure means")
    p.add_argument("--test-per-class", type=int, default=40, help="held-out queries per class")
    p.add_argument("--vector-source", default="auto",
                   choices=["auto", "private", "public", "random", "zero"],
                   help="auto: the measured choice for the model under DP (public on "
                        "smollm2-135m), else the demonstrations' private vector")
    p.add_argument("--dirichlet-alpha", type=float, default=0.0, help="0 = IID split")
    p.add_argument("--max-colluders", type=int, default=-1,
                   help="distributed DP tolerating this many colluding participants "
                        "(masked rounds, one global_adam step each); -1 = local DP")
    p.add_argument("--max-dropouts", type=int, default=0,
                   help="with --max-colluders: participants that may drop out (survivors "
                        "recover their masks from Shamir shares; rounds need n - d)")
    p.add_argument("--drop-after-round", type=int, default=0,
                   help="fault injection: SIGKILL the last participant once calibration "
                        "round K has closed (needs --max-dropouts >= 1)")
    p.add_argument("--round-timeout-s", type=float, default=0.0,
                   help="the coordinator's round deadline (default 1800 s; a round that "
                        "lost a participant closes there)")
    p.add_argument("--workdir", default="",
                   help="keep the PKI, configs, state and results here (default: a temp folder)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("experiment", help="run a privacy-utility grid with baselines (resumable)")
    p.add_argument("--config", required=True, help="TOML with an [experiment] table")
    p.add_argument("--out", default="", help="output folder (default runs/<name>)")
    p.add_argument("--report-only", action="store_true", help="only rebuild report and plots")
    p.add_argument("--device", default="", help="override the config's device (cpu, cuda...)")
    p.add_argument("--tasks", nargs="+", default=[], help="run only these of the config's tasks")
    p.add_argument("--plan", action="store_true",
                   help="list the cells still to run, in run order, and exit (loads nothing)")
    p.add_argument("--jobs", type=int, default=1,
                   help="cells run at once, one process each (e.g. several on one GPU)")
    p.add_argument("--cell", default="", help=argparse.SUPPRESS)  # a --jobs child's run key
    p.set_defaults(func=_cmd_experiment)

    p = sub.add_parser("infer", help="classify texts with a calibrated task")
    p.add_argument("--calibrated", required=True, help="*-calibrated.pt from a participant")
    p.add_argument("--model", default="smollm2-135m",
                   help="the model the task was calibrated on: alias, folder, .gguf or HF id")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    p.add_argument("--task", default="",
                   help="built-in task name or task .toml (default: the one saved with it)")
    p.add_argument("--injection", choices=("auto", "fold", "hooks"), default="auto",
                   help="fold: merge the vector and coefficients into the attention / MLP output "
                        "projections once (no hook per layer; checked against the hooks); "
                        "hooks: forward hooks, as in calibration; auto (default): fold where the "
                        "architecture allows it, except on CUDA (measured slower there at "
                        "batch 1), else hooks")
    p.add_argument("text", nargs="*", help="texts (or one per line on stdin)")
    p.set_defaults(func=_cmd_infer)

    p = sub.add_parser("privacy", help="privacy ledger tools")
    psub = p.add_subparsers(dest="privacy_command", required=True)
    r = psub.add_parser("report", help="print a participant's ledger and epsilon spent")
    r.add_argument("--ledger", required=True, help="a participant's ledger .jsonl")
    r.add_argument("--delta", type=float, default=1e-5, help="delta of the reported epsilon")
    r.add_argument("--budget", type=float, default=math.inf, help="the budget epsilon, if any")
    r.add_argument("--accountant", default="rdp", choices=["rdp", "prv"], help="Opacus accountant")
    r.set_defaults(func=_cmd_privacy_report)

    p = sub.add_parser("status", help="show a federation's state")
    p.add_argument("--coordinator", required=True, help="host:port")
    p.add_argument("--cert", required=True, help="a roster member's client certificate (PEM)")
    p.add_argument("--key", required=True, help="its private key (PEM)")
    p.add_argument("--ca", required=True, help="the federation CA certificate (PEM)")
    p.set_defaults(func=_cmd_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedctx`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except FedCtxError as exc:
        print(f"fedctx: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `fedctx experiment --plan | head`: the reader left
        # Python flushes stdout again at exit; point it at devnull so that is silent too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
