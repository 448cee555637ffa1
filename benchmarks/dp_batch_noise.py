"""How the DP-SGD batch size sets the noise on each calibration step, at a fixed budget.

For a participant with ``--records`` records, ``--steps`` calibration steps in the whole
protocol and a per-participant budget (epsilon, delta = 1e-5), the accountant's noise
multiplier sigma for each expected batch size B (Poisson rate B / records), as a
participant computes it (``privacy.accounting.noise_multiplier_for_budget``), with each of
Opacus's accountants given (RDP, the default, and PRV: the same (epsilon, delta) bound
computed more tightly). Printed per B: sigma, and the noise std on the step's *mean*
clipped gradient in units of the clip norm, ``sigma / B``; the surviving signal of the
clipped mean does not depend on B (docs/results.md §6), so ``sigma / B`` is what the batch
size buys; with two accountants, the second's sigma as a share of the first's. No model
is loaded.

    .venv/bin/python benchmarks/dp_batch_noise.py [--records 256] [--steps 20]
        [--accountants rdp prv]
"""

from __future__ import annotations

import argparse

from _common import print_footer, print_header, print_table
from privacy.accounting import ACCOUNTANTS, PlannedRelease, noise_multiplier_for_budget


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20, help="calibration steps in all rounds")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[8.0, 1.0])
    parser.add_argument("--batches", type=int, nargs="+", default=[12, 24, 32, 48, 64, 96, 128])
    parser.add_argument("--accountants", nargs="+", choices=ACCOUNTANTS, default=["rdp"])
    args = parser.parse_args()
    print_header("DP-SGD batch size against per-step noise", quick=False, torch_threads=False,
                 extra=[f"records {args.records}, steps {args.steps}, delta 1e-5"])
    rows = []
    for epsilon in args.epsilons:
        base = None
        for batch in args.batches:
            rate = min(1.0, batch / args.records)
            sigmas = [noise_multiplier_for_budget(
                target_epsilon=epsilon, target_delta=1e-5, accountant=accountant,
                plan=[PlannedRelease(sample_rate=rate, steps=args.steps)])
                for accountant in args.accountants]
            per_mean = sigmas[0] / batch
            base = base or per_mean
            rows.append([f"{epsilon:g}", batch, f"{rate:.3f}",
                         *(f"{sigma:.3f}" for sigma in sigmas),
                         f"{per_mean:.4f}", f"{base / per_mean:.2f}x",
                         *(f"{sigma / sigmas[0]:.3f}" for sigma in sigmas[1:])])
    first = args.accountants[0]
    print_table(["epsilon", "batch", "rate", *(f"sigma ({a})" for a in args.accountants),
                 f"noise/clip on mean ({first})", "less noise",
                 *(f"{a} / {first}" for a in args.accountants[1:])], rows, left=1)
    print_footer()


if __name__ == "__main__":
    main()
