"""Where the calibration noise of a federation comes from, participant by participant.

For the experiment harness's own split of a task (``fedctx experiment``'s code: Dirichlet
(alpha) over labels, ``--participants`` parts, each capped at ``--records``), every participant's
accountant (Opacus RDP, ``privacy.accounting.noise_multiplier_for_budget``) picks its noise
multiplier sigma_k for Poisson rate ``q_k = min(1, B / n_k)`` and ``--steps`` steps. The
noise std on its step's mean clipped gradient, in units of the clip norm, is
``s_k = sigma_k / (q_k n_k)``. Printed per task, seed, budget and batch B:

* the smallest participant, its sigma and s_k, and its share of the noise variance of the
  uniform mean over participants (``sum_k s_k^2 / N^2``, the mean the protocol takes);
* the aggregate noise std of the uniform mean; of the mean weighted as
  ``update_weighting = "precision"`` weights it (``w_k = q_k n_k / sqrt(1 + sigma_k^2)``,
  std ``sqrt(sum_k w_k^2 s_k^2) / sum_k w_k``); and of the linear optimum, the
  inverse-variance weighted mean (weights ``1 / s_k^2``, std ``1 / sqrt(sum_k 1 / s_k^2)``);
* with ``--max-colluders t``, the mean's std under distributed DP
  (``PrivacySettings.max_colluders``: pairwise-masked rounds, every participant adding
  its :func:`participant.masked_sum.noise_shares` share and weighing its update by its
  weight, updates divided by the common batch), ``sqrt(sum_k (w_k share_k)^2) / (B sum_k w_k)``.

Only the accountant and the data split run; no model is loaded. These are linear noise
figures: they describe ``optimizer = "global_adam"``, whose participants send plain SGD
updates. With the paper's local AdamW each participant's update is already divided by the
root mean square of its own (under DP mostly noise) gradients, which weights it by about
``1 / s_k``: the uniform mean of AdamW updates then behaves roughly like the
precision-weighted column, and precision weights on top like the inverse-variance one
(docs/results.md §13: no measurable accuracy gain at epsilon 1, where the uniform column
promised 2.8-4.2x less noise). The table says where the noise enters, not the accuracy it costs.

    .venv/bin/python benchmarks/dp_aggregate_noise.py [--tasks sst2 subj trec agnews]
        [--seeds 0 1 2] [--evaluation-split test|validation] [--max-colluders 4]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from _common import SHARED_DATA, print_footer, print_header, print_table
from participant.calibration import precision_weight
from participant.masked_sum import noise_shares
from privacy.accounting import PlannedRelease, noise_multiplier_for_budget


def participant_sizes(task_name: str, *, participants: int, alpha: float, seed: int,
                      records: int, evaluation_split: str) -> list[int]:
    """Record counts of each participant in the experiment harness's own split."""
    from fedctx.experiment import ExperimentConfig, Harness, RunSpec

    config = ExperimentConfig(name="noise", tasks=(task_name,), data_root=str(SHARED_DATA),
                              records_per_participant=records,
                              evaluation_split=evaluation_split, test_per_class=40)
    _, parts, _, _ = Harness(config, Path("unused")).splits(
        RunSpec(task_name, "fedctx", participants, alpha, seed))
    return [len(p) for p in parts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["sst2", "subj", "trec", "agnews"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--participants", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--records", type=int, default=256, help="cap per participant")
    parser.add_argument("--steps", type=int, default=20, help="calibration steps in all rounds")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[8.0, 1.0])
    parser.add_argument("--batches", type=int, nargs="+", default=[12, 64])
    parser.add_argument("--max-colluders", type=int, default=-1,
                        help="t >= 0 adds the distributed-DP column (t colluders tolerated)")
    parser.add_argument("--evaluation-split", choices=["test", "validation"], default="test",
                        help="validation: the harness first holds out 40 records per class "
                             "of the train split (evaluation_split = \"validation\")")
    args = parser.parse_args()
    print_header("Per-participant calibration noise in the federated mean", quick=False,
                 torch_threads=False,
                 extra=[f"{args.participants} participants, Dirichlet({args.alpha:g}), "
                        f"<= {args.records} records each, {args.steps} steps, delta 1e-5, "
                        f"{args.evaluation_split} split"])
    sigma_cache: dict[tuple[float, float], float] = {}

    def sigma_for(epsilon: float, rate: float) -> float:
        key = (epsilon, round(rate, 6))
        if key not in sigma_cache:
            sigma_cache[key] = noise_multiplier_for_budget(
                target_epsilon=epsilon, target_delta=1e-5,
                plan=[PlannedRelease(sample_rate=rate, steps=args.steps)])
        return sigma_cache[key]

    rows = []
    for task in args.tasks:
        for seed in args.seeds:
            sizes = participant_sizes(task, participants=args.participants, alpha=args.alpha,
                                      seed=seed, records=args.records,
                                      evaluation_split=args.evaluation_split)
            for epsilon in args.epsilons:
                for batch in args.batches:
                    noise, weights = [], []
                    for n in sizes:
                        rate = min(1.0, batch / n)
                        sigma = sigma_for(epsilon, rate)
                        noise.append(sigma / (rate * n))
                        weights.append(precision_weight(expected_batch=max(1, round(rate * n)),
                                                        noise_multiplier=sigma))
                    k = min(range(len(sizes)), key=lambda i: sizes[i])
                    uniform = math.sqrt(sum(s * s for s in noise)) / len(noise)
                    precision = math.sqrt(sum((w * s) ** 2 for w, s in zip(
                        weights, noise, strict=True))) / sum(weights)
                    weighted = 1.0 / math.sqrt(sum(1.0 / (s * s) for s in noise))
                    share = noise[k] ** 2 / sum(s * s for s in noise)
                    distributed = []
                    if args.max_colluders >= 0:
                        floor = sigma_for(epsilon, min(1.0, batch / args.records))
                        shares = [noise_shares(
                            own=sigma_for(epsilon, min(1.0, batch / n)), floor=floor,
                            participants=len(sizes), max_colluders=args.max_colluders)
                            for n in sizes]
                        std = math.sqrt(sum((x.weight * x.share) ** 2 for x in shares)) / (
                            batch * sum(x.weight for x in shares))
                        distributed = [f"{std:.4f} ({uniform / std:.2f}x)"]
                    rows.append([
                        task, seed, f"{epsilon:g}", batch, f"{min(sizes)}-{max(sizes)}",
                        f"{sigma_for(epsilon, min(1.0, batch / sizes[k])):.3f}",
                        f"{noise[k]:.4f}", f"{share:.0%}", f"{uniform:.4f}",
                        f"{precision:.4f} ({uniform / precision:.2f}x)",
                        f"{weighted:.4f} ({uniform / weighted:.2f}x)", *distributed,
                    ])
    print_table(["task", "seed", "epsilon", "B", "records (min-max)", "sigma (smallest)",
                 "s (smallest)", "its share of variance", "uniform mean std",
                 "precision-weighted std", "inverse-variance std",
                 *([f"distributed std (t = {args.max_colluders})"]
                   if args.max_colluders >= 0 else [])], rows, left=2)
    print_footer()


if __name__ == "__main__":
    main()
