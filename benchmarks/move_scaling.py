"""Is a DP calibration too short or pointed the wrong way? Rescale its move and re-score.

Under DP, Adam divides each step by a second moment that is mostly DP noise, so calibration
moves the coefficients less than without DP (``coefficient_displacement.py``: ``|d|`` and
``share``); the noise also turns the move off the non-private direction. The two call for
different fixes: a move that is only too short is recovered by a noise-aware step size (a
bias-corrected Adam, or a larger learning rate under DP: post-processing, no budget); a
move that points elsewhere is recovered only by more signal per step. This reads which one
costs accuracy, without training: for every fedctx cell of a finished ``fedctx
experiment`` out folder it loads the cached calibrated coefficients ``c`` and vector,
and scores ``c0 + k (c - c0)`` (``c0``: I2CL's initial coefficients) for each scale ``k``
on the cell's own evaluation queries (the harness's split of ``--config``), printing
accuracy and the mean cross-entropy over the label words (a continuous reading with less
query noise than accuracy). ``k = 1`` reproduces the cell's accuracy; ``k = 0`` is the
injected vector with the initial coefficients.

Run it on validation splits only: choosing a scale on the test split would be tuning on
it.

    .venv/bin/python benchmarks/move_scaling.py --config experiments/dp_batch_validation_b12.toml \\
        --out runs/dp_batch_validation_b12 [--tasks subj trec] [--scales 0 1 1.5 2 3]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from _common import (
    injected_reading,
    print_footer,
    print_header,
    print_table,
    quiet_transformers,
    validation_config,
)


def main() -> None:
    import torch

    from coefficient_displacement import calibrated_state
    from fedctx.experiment import Harness, RunSpec, describe
    from participant.hooks import default_coefficients

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True,
                        help="the experiment config the out folder ran (for its splits)")
    parser.add_argument("--out", type=Path, required=True, help="its fedctx experiment --out")
    parser.add_argument("--tasks", nargs="+", default=None, help="default: all in the folder")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.0, 1.0, 1.5, 2.0, 3.0])
    parser.add_argument("--allow-test-split", action="store_true",
                        help="score a test-split folder too (reading only: never choose on it)")
    args = parser.parse_args()
    quiet_transformers()
    print_header("Calibrated coefficients: the move rescaled", quick=False)

    config = validation_config(args.config, allow_test_split=args.allow_test_split)
    harness = Harness(config, args.out)
    lm, sites = harness.model()
    spec_fields = RunSpec.__dataclass_fields__
    table = []
    for line in (args.out / "results.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("method") != "fedctx" or (args.tasks and row["task"] not in args.tasks):
            continue
        if row.get("evaluation_split", "test") != config.evaluation_split:
            continue
        state = calibrated_state(args.out, row["run_key"])
        if state is None:
            continue
        spec = RunSpec(**{k: v for k, v in row.items() if k in spec_fields})
        task, _, queries, _ = harness.splits(spec)
        labels = torch.tensor([e.label for e in queries])
        start = default_coefficients(state["coefficients"].shape[0])
        move = state["coefficients"] - start
        readings = []
        for scale in args.scales:
            readings.append(injected_reading(lm, sites, task, [e.text for e in queries], labels,
                                             vector=state["vector"],
                                             coefficients=start + scale * move))
        eps = "no DP" if math.isinf(row["epsilon"]) else f"{row['epsilon']:g}"
        table.append([row["task"], row["seed"], eps, describe(spec).split(": ", 1)[1],
                      f"{100 * row['accuracy']:.1f}", f"{move.norm().item():.3f}", *readings])
        print(f"  scored {row['task']} {eps} {row['vector_source']}", flush=True)
    table.sort(key=lambda r: (r[0], r[1], r[2], r[3]))
    print_table(["task", "seed", "epsilon", "cell", "accuracy", "|d|",
                 *[f"k={k:g}: acc / CE" for k in args.scales]], table, left=4)
    print_footer()


if __name__ == "__main__":
    main()
