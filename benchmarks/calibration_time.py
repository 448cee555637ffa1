"""Time of one federated calibration round per participant (``LocalCalibrator.run_round``).

Run: ``.venv/bin/python benchmarks/calibration_time.py [--quick]``.

On the default model and sst2 training records (class-balanced, ``--records`` of them, as a
participant's local data), with the task's public reference as the injected vector: for every
steps_per_round x batch size, a calibrator in non-private mode (plain AdamW on the mean
gradient, uniform batches) and in private mode (noise multiplier 1.0: Poisson sampling,
per-record gradients clipped and noised by Opacus's ``DPOptimizer``) runs one warm-up round,
then ``--rounds`` timed rounds (the two modes interleaved), each starting from the previous
global coefficients as in ``Participant.run``. Printed: median time per round and per step,
the mean number of records actually drawn per step (Poisson in private mode) and the
private / non-private ratio. Encryption and upload of the 4L update are not included (see
privacy_overhead.py and communication.py: one ciphertext).
"""

from __future__ import annotations

import argparse
import time

from _common import (
    SHARED_DATA,
    fmt_s,
    median,
    print_footer,
    print_header,
    print_table,
    quiet_transformers,
    set_torch_threads,
)
from participant.calibration import CalibrationConfig, LocalCalibrator
from participant.context_vectors import public_reference
from participant.data import balanced_sample, load_split
from participant.hooks import default_coefficients
from participant.layers import resolve_layer_sites
from participant.model import load_model
from participant.tasks import load_task


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, time every configuration, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="2 steps per round, batch 4, 32 records, 1 timed round")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir", default=str(SHARED_DATA / "sst2"))
    parser.add_argument("--steps", default="5,12", help="steps_per_round values")
    parser.add_argument("--batches", default="12,16", help="batch sizes")
    parser.add_argument("--records", type=int, default=256, help="local calibration records")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds (after 1 warm-up)")
    parser.add_argument("--noise-multiplier", type=float, default=1.0)
    parser.add_argument("--loss", default=CalibrationConfig().loss,
                        help="CalibrationConfig.loss (default: the project's default)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.batches, args.records, args.rounds = "2", "4", 32, 1
    set_torch_threads(args.threads)
    quiet_transformers()
    steps_list = [int(s) for s in args.steps.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    print_header("fedctx calibration round time per participant", quick=args.quick, extra=[
        f"settings: model {args.model}, sst2 train ({args.data_dir}), {args.records} records, "
        f"steps_per_round {steps_list}, batch {batches}, private noise multiplier "
        f"{args.noise_multiplier}, loss {args.loss}, 1 warm-up + {args.rounds} timed round(s) "
        "(median)"])
    start_all = time.perf_counter()
    lm = load_model(args.model)
    sites = resolve_layer_sites(lm.model)
    task = load_task("sst2")
    records = balanced_sample(load_split(task, "train", data_dir=args.data_dir),
                              per_class=args.records // len(task.labels),
                              num_classes=len(task.labels), seed=0)
    vector = public_reference(lm, sites, task).vector

    rows, per_round = [], {}
    for steps in steps_list:
        for batch in batches:
            runs = {}
            for private in (False, True):
                config = CalibrationConfig(batch_size=batch, steps_per_round=steps,
                                           rounds=1 + args.rounds, loss=args.loss)
                calibrator = LocalCalibrator(
                    lm, sites, task, records, vector, config=config,
                    noise_multiplier=args.noise_multiplier if private else 0.0, seed=0)
                drawn: list[int] = []
                original = calibrator._sample

                def sample(original=original, drawn=drawn) -> list[int]:  # type: ignore[no-untyped-def]
                    chosen = original()
                    drawn.append(len(chosen))
                    return chosen

                calibrator._sample = sample  # type: ignore[method-assign]
                coefficients = default_coefficients(sites.num_layers)
                coefficients = coefficients + calibrator.run_round(coefficients)  # warm-up
                runs[private] = {"cal": calibrator, "coef": coefficients, "drawn": drawn,
                                 "times": []}
            for _ in range(args.rounds):  # interleaved: load drift hits both modes alike
                for private in (False, True):
                    run = runs[private]
                    start = time.perf_counter()
                    update = run["cal"].run_round(run["coef"])
                    run["times"].append(time.perf_counter() - start)
                    run["coef"] = run["coef"] + update
            for private in (False, True):
                run = runs[private]
                t = median(run["times"])
                per_round[(steps, batch, private)] = t
                timed_draws = run["drawn"][steps:]
                losses = run["cal"].losses
                rows.append([
                    steps, batch, "private (DP-SGD)" if private else "non-private", fmt_s(t),
                    fmt_s(t / steps), f"{sum(timed_draws) / max(1, len(timed_draws)):.1f}",
                    f"{losses[-1]:.3f}" if losses else "n/a",
                ])
    print_table(["steps/round", "batch", "mode", "per round", "per step", "records/step",
                 "last loss"], rows, left=0,
                title="Table 1. LocalCalibrator.run_round (one participant, one round)")
    ratio_rows = [[steps, batch, fmt_s(per_round[(steps, batch, False)]),
                   fmt_s(per_round[(steps, batch, True)]),
                   f"{per_round[(steps, batch, True)] / per_round[(steps, batch, False)]:.2f}"]
                  for steps in steps_list for batch in batches]
    print_table(["steps/round", "batch", "non-private", "private", "private/non-private"],
                ratio_rows, left=0, title="Table 2. Cost of DP-SGD")
    print("records/step: mean records drawn per timed step (private mode samples each record "
          "with probability batch/records, so it varies).")
    print(f"\nfinished in {time.perf_counter() - start_all:.1f} s")
    print_footer()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
