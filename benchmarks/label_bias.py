"""What the class-balanced label bias gives on a finished sweep's calibrated cells.

Under DP, calibration's per-record clip makes every record push with the same force, so on
a Dirichlet split the classes most participants hold keep pulling the coefficients towards
them (docs/results.md §16-18, §28). ``CalibrationConfig.label_bias = "balanced"`` adds a
per-class bias to the label words' logits, chosen so that the classifier's mean predicted
distribution, averaged over the *true* classes with equal weight, is uniform: C numbers
from one more DP release (``privacy.label_bias``). This reads what it gives on a sweep's
cached cells without running them again:

- **oracle**: the bias minimising the class-balanced cross-entropy on the participants'
  pooled sampled records (no DP; a reference for the one-step estimate);
- **one step, no noise**: ``privacy.label_bias.balanced_bias`` of the summed exact
  statistics (what a non-private federation computes);
- **one step, DP**: as the protocol does it: every participant adds Gaussian noise of
  multiplier ``--noise-multipliers`` (one column each) to its statistics *locally* (the
  threat model's noise) and they are summed; mean ± std over ``--draws`` noise draws, and
  the largest factor by which the release, composed by a participant's accountant with
  calibration's steps, raised that participant's calibration noise (``x1.000`` = free);
  ``--prior-stds`` adds a column per shrinkage of the noisy class rows towards uniform
  (``balanced_bias``'s ``prior_count``, in stds of the summed noise; every column of one
  multiplier sees the same noise draws).

Each participant Poisson-samples its records at ``--sample-rate``. Central-noise analysis
cells get the same noise and no cost column (their budget is not the row's epsilon). The
forward passes are the cost; their logits are kept in ``<out>/label_bias_logits/``, so
reading the same cells again is instant. The cells are scored on their own queries; on a
test split this is a diagnostic, not a selection
(``--allow-test-split``).

    .venv/bin/python benchmarks/label_bias.py --config experiments/global_adam_seeds.toml \\
        --out runs/global_adam_seeds --allow-test-split [--tasks subj] [--seeds 2]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from _common import print_footer, print_header, print_table, quiet_transformers, validation_config


def balanced_oracle_bias(logits, labels, num_classes: int):  # type: ignore[no-untyped-def]
    """Bias ``[C]`` minimising the class-balanced cross-entropy of ``logits + b``."""
    import torch

    counts = torch.bincount(labels, minlength=num_classes).float().clamp(min=1)
    weights = (1.0 / counts)[labels]
    weights = weights / weights.sum()
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([bias], max_iter=100)

    def closure():  # type: ignore[no-untyped-def]
        optimizer.zero_grad()
        loss = (torch.nn.functional.cross_entropy(logits + bias, labels, reduction="none")
                * weights).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return bias.detach()


def main() -> None:
    import torch

    from coefficient_displacement import calibrated_state
    from fedctx.experiment import Harness, RunSpec
    from fedctx.report import load_rows
    from participant.evaluation import label_scores, score
    from privacy.accounting import PlannedRelease, noise_multiplier_for_budget
    from privacy.label_bias import SENSITIVITY, balanced_bias, class_statistics, summed_noise_std
    from privacy.noise import add_gaussian_noise

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="its fedctx experiment --out")
    parser.add_argument("--sample-rate", type=float, default=0.25,
                        help="Poisson rate at which each participant samples its records")
    parser.add_argument("--noise-multipliers", type=float, nargs="+", default=[5.0],
                        help="the statistics' noise multiplier, one column each (the protocol's "
                             "CalibrationConfig.label_bias_noise_multiplier is 5)")
    parser.add_argument("--prior-stds", type=float, nargs="+", default=[0.0],
                        help="the shrinkage's pseudo-count in stds of the summed noise "
                             "(balanced_bias's prior_count; one column each per multiplier)")
    parser.add_argument("--draws", type=int, default=20, help="noise draws per setting")
    parser.add_argument("--tasks", nargs="+", default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--epsilons", type=float, nargs="+", default=None,
                        help="only these budgets (inf: the non-private cells)")
    parser.add_argument("--allow-test-split", action="store_true")
    args = parser.parse_args()
    quiet_transformers()
    print_header("A class-balanced label bias released under DP", quick=False)

    config = validation_config(args.config, allow_test_split=args.allow_test_split)
    harness = Harness(config, args.out)
    lm, sites = harness.model()
    fields = RunSpec.__dataclass_fields__
    table = []
    for row in load_rows(args.out / "results.jsonl"):
        if (row["method"] != "fedctx" or (args.tasks and row["task"] not in args.tasks)
                or (args.seeds and row["seed"] not in args.seeds)
                or (args.epsilons and row["epsilon"] not in args.epsilons)):
            continue
        state = calibrated_state(args.out, str(row["run_key"]))
        if state is None:
            continue
        spec = RunSpec(**{k: v for k, v in row.items() if k in fields})
        task, parts, queries, _ = harness.splits(spec)
        num_classes = len(task.labels)
        inject = {"vector": state["vector"], "coefficients": state["coefficients"]}
        # the forward passes are the cost; their logits are kept beside the sweep
        cache_path = args.out / "label_bias_logits" / f"{row['run_key']}-{args.sample_rate:g}.pt"
        cache = torch.load(cache_path, weights_only=True) if cache_path.exists() else {}
        if "queries" not in cache:
            cache["queries"] = label_scores(lm, sites, task, [e.text for e in queries],
                                            **inject)
        query_logits = cache["queries"]
        query_labels = [e.label for e in queries]

        def accuracy(bias, logits=query_logits, labels=query_labels, c=num_classes):
            return score((logits + bias).argmax(-1).tolist(), labels, num_classes=c).accuracy

        sampler = torch.Generator().manual_seed(7919 + int(row["seed"]))
        per_participant, pooled_logits, pooled_labels = [], [], []
        for index, records in enumerate(parts):
            keep = torch.rand(len(records), generator=sampler) < args.sample_rate
            sampled = [e for e, k in zip(records, keep.tolist(), strict=True) if k]
            if not sampled:
                per_participant.append(torch.zeros(num_classes, num_classes + 1,
                                                   dtype=torch.float64))  # a release of zeros
                continue
            if f"p{index}" not in cache:
                cache[f"p{index}"] = label_scores(lm, sites, task, [e.text for e in sampled],
                                                  **inject)
            logits = cache[f"p{index}"]
            labels = torch.tensor([e.label for e in sampled])
            per_participant.append(class_statistics(torch.softmax(logits.double(), -1), labels))
            pooled_logits.append(logits)
            pooled_labels.append(labels)
        cache_path.parent.mkdir(exist_ok=True)
        torch.save(cache, cache_path)
        oracle = balanced_oracle_bias(torch.cat(pooled_logits), torch.cat(pooled_labels),
                                      num_classes)
        exact = balanced_bias(sum(per_participant))
        cells = [f"{100 * accuracy(torch.zeros(num_classes)):.1f}",
                 f"{100 * accuracy(oracle):.1f}", f"{100 * accuracy(exact):.1f}"]
        central = row.get("noise_model", "local") != "local"
        steps = config.rounds * config.steps_per_round

        def dp_reading(stds, cost, prior_count, seed=int(row["seed"]),  # type: ignore[no-untyped-def]
                       per_participant=per_participant):
            # the same draws for every column: the shrinkage columns are paired
            noise = torch.Generator().manual_seed(104729 + seed)
            draws = []
            for _ in range(args.draws):
                noisy = sum(add_gaussian_noise(s, std=std, generator=noise)
                            for s, std in zip(per_participant, stds, strict=True))
                draws.append(accuracy(balanced_bias(noisy, prior_count=prior_count)))
            mean = sum(draws) / len(draws)
            spread = (sum((d - mean) ** 2 for d in draws) / max(1, len(draws) - 1)) ** 0.5
            return f"{100 * mean:.1f} ± {100 * spread:.1f} ({cost})"

        for multiplier in args.noise_multipliers:
            # fixed, as in the protocol: a central-noise analysis cell's participants add
            # it whole too (only calibration's noise is split there)
            std = multiplier * SENSITIVITY
            if not math.isfinite(row["epsilon"]):
                std = 0.0  # a non-private federation releases the statistics as they are
            cost = "-"
            if math.isfinite(row["epsilon"]) and not central:
                # the protocol: each participant's accountant solves for its common
                # multiplier with this fixed-multiplier release in its plan
                ratios = []
                for records in parts:
                    rate = min(1.0, config.batch_size / max(1, len(records)))
                    plan = [PlannedRelease(sample_rate=rate, steps=steps)]
                    budget = {"target_epsilon": row["epsilon"], "target_delta": config.delta,
                              "accountant": config.accountant}
                    ratios.append(noise_multiplier_for_budget(plan=[*plan, PlannedRelease(
                        sample_rate=args.sample_rate, steps=1, noise_multiplier=multiplier)],
                        **budget) / noise_multiplier_for_budget(plan=plan, **budget))
                cost = f"x{max(ratios):.3f}"
            for prior_std in args.prior_stds:
                prior_count = prior_std * summed_noise_std(
                    noise_multiplier=std / SENSITIVITY, contributions=len(per_participant))
                cells.append(dp_reading([std] * len(per_participant), cost, prior_count))
        noise_label = " central" if central else ""
        table.append([row["task"], row["seed"], f"{row['epsilon']:g}{noise_label}", *cells])
        print("  " + " | ".join(str(c) for c in table[-1]), flush=True)
    print_table(["task", "seed", "epsilon", "as calibrated", "oracle", "one step, no noise",
                 *(f"one step, DP at {m:g}, prior {k:g} std (calibration sigma x)"
                   for m in args.noise_multipliers for k in args.prior_stds)],
                table, left=4)
    print_footer()


if __name__ == "__main__":
    main()
