"""Can calibrated coefficients from other tasks serve as a public starting point?

Under DP, calibration keeps only part of its non-private move (docs/results.md §11-12). A
public prior, coefficients calibrated once on *other* tasks' public data and shipped with
the model like the public reference vector, would spend no budget and shorten the move DP
has to make. This measures whether such a prior carries over, without training: for each
target task it injects the task's public reference vector with, in turn, I2CL's initial
coefficients, each other task's non-private calibrated coefficients, and their
leave-one-out mean (also with the zero vector, where only the betas act), and scores each
on the target's evaluation queries (``--config``'s split), printing accuracy and the mean
label-word cross-entropy. ``--own`` adds the target's own calibrated coefficients as a
reference (never a prior: on a validation split their training records may include the
queries).

The sources are the non-private public-vector cells of a finished ``fedctx experiment``
folder (``vector_source = "public"``, no DP, one seed). Run it on a validation split:

    .venv/bin/python benchmarks/coefficient_transfer.py --config experiments/clip_validation.toml \\
        --sources runs/records_256_seeds --source-seed 3 [--own]
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
    from fedctx.experiment import Harness, RunSpec
    from participant.context_vectors import public_reference
    from participant.hooks import default_coefficients

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True,
                        help="experiment config whose evaluation split scores the targets")
    parser.add_argument("--sources", type=Path, required=True,
                        help="fedctx experiment --out holding the non-private public-vector cells")
    parser.add_argument("--source-seed", type=int, required=True)
    parser.add_argument("--tasks", nargs="+", default=["sst2", "subj", "trec", "agnews"])
    parser.add_argument("--own", action="store_true",
                        help="also score each target's own calibrated coefficients")
    parser.add_argument("--allow-test-split", action="store_true")
    args = parser.parse_args()
    quiet_transformers()
    print_header("Calibrated coefficients carried to other tasks", quick=False)

    config = validation_config(args.config, allow_test_split=args.allow_test_split)
    calibrated: dict[str, torch.Tensor] = {}
    for line in (args.sources / "results.jsonl").read_text().splitlines():
        row = json.loads(line)
        if (row.get("method") == "fedctx" and row["task"] in args.tasks
                and row["seed"] == args.source_seed and math.isinf(row["epsilon"])
                and row["vector_source"] == "public" and row["task"] not in calibrated):
            state = calibrated_state(args.sources, row["run_key"])
            if state is not None:
                calibrated[row["task"]] = state["coefficients"]
    missing = sorted(set(args.tasks) - set(calibrated))
    if missing:
        raise SystemExit(f"no non-private public-vector cell of seed {args.source_seed} "
                         f"with cached coefficients for {missing} in {args.sources}")

    harness = Harness(config, args.sources)  # for the model and splits only; writes nothing
    lm, sites = harness.model()
    table = []
    for target in args.tasks:
        spec = RunSpec(task=target, method="fedctx", participants=config.participants[0],
                       dirichlet_alpha=config.dirichlet_alpha[0], seed=config.seeds[0])
        task, _, queries, _ = harness.splits(spec)
        labels = torch.tensor([e.label for e in queries])
        texts = [e.text for e in queries]
        vector = public_reference(lm, sites, task).vector
        others = [t for t in args.tasks if t != target]
        start = default_coefficients(sites.num_layers)
        candidates = [("initial", start, True),
                      ("mean of the others", torch.stack([calibrated[t] for t in others]).mean(0),
                       True)]
        candidates += [(f"from {t}", calibrated[t], False) for t in others]
        if args.own:
            candidates.append(("own (reference)", calibrated[target], False))
        for name, coefficients, with_zero in candidates:
            readings = []
            for injected in (vector, torch.zeros_like(vector)):
                if injected is not vector and not with_zero:
                    readings.append("")
                    continue
                readings.append(injected_reading(lm, sites, task, texts, labels,
                                                 vector=injected, coefficients=coefficients))
            table.append([target, len(queries), name, *readings])
            print(f"  scored {target}: {name}", flush=True)
    print_table(["target", "queries", "coefficients", "public vector: acc / CE",
                 "zero vector: acc / CE"], table, left=3)
    print_footer()


if __name__ == "__main__":
    main()
