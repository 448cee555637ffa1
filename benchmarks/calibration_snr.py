"""Where the calibration budget goes: DP-SGD signal against noise, per coefficient grouping.

For each task, one participant's labelled records (a class-balanced sample of the train
split) are run through the default model with the public reference vector injected, at the
I2CL initial coefficients, and every record's gradient of the calibration loss is taken
(the quantity DP-SGD clips). Printed per task:

- per-record gradient norms (median, 10th and 90th percentile) against the clip norm;
- for coefficient groups G (layers sharing their 4 coefficients, G = L is I2CL), the
  *signal* ``s = |mean_i clip(g_i)| / clip`` (at most 1; when every record is clipped it
  is the coherence ``|mean_i g_i / |g_i||`` whatever the clip), and the signal-to-noise
  ratio of one DP-SGD step, ``s * batch / (sigma * sqrt(4G))`` (noise std
  ``sigma * clip`` per value, divided by the batch), with sigma set by the budget, the
  protocol's steps and sampling rate as the participant's accountant would.

    .venv/bin/python benchmarks/calibration_snr.py [--epsilon 8] [--records 48]
"""

from __future__ import annotations

import argparse
import math

import torch

from _common import print_footer, print_header, print_table, quiet_transformers
from participant.calibration import CalibrationConfig, LocalCalibrator
from participant.context_vectors import public_reference
from participant.data import balanced_sample, load_split
from participant.layers import resolve_layer_sites
from participant.model import load_model
from participant.tasks import load_task
from privacy.accounting import PlannedRelease, noise_multiplier_for_budget


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--records", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument("--steps", type=int, default=20, help="local steps, whole protocol")
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--groups", type=int, nargs="+", default=[0, 10, 5, 3, 2, 1])
    parser.add_argument("--tasks", nargs="+", default=["sst2", "subj", "agnews", "trec"])
    parser.add_argument("--data-root", default="../shared/data")
    args = parser.parse_args()
    print_header("calibration signal-to-noise (DP-SGD)", quick=False)
    quiet_transformers()
    sample_rate = min(1.0, args.batch_size / args.records)
    sigma = noise_multiplier_for_budget(
        target_epsilon=args.epsilon, target_delta=args.delta,
        plan=[PlannedRelease(sample_rate=sample_rate, steps=args.steps)])
    print(f"epsilon {args.epsilon} (calibration only, public vector), delta {args.delta}: "
          f"{args.steps} steps at sampling rate {sample_rate:.3f} -> noise multiplier "
          f"{sigma:.3f}; clip {args.clip}; {args.records} records\n")
    lm = load_model()
    sites = resolve_layer_sites(lm.model)
    layers = sites.num_layers
    rows = []
    for name in args.tasks:
        task = load_task(name)
        train = load_split(task, "train", data_dir=f"{args.data_root}/{name}")
        records = balanced_sample(train, per_class=args.records // len(task.labels),
                                  num_classes=len(task.labels), seed=0)
        vector = public_reference(lm, sites, task).vector
        calibrator = LocalCalibrator(lm, sites, task, records, vector,
                                     config=CalibrationConfig(batch_size=args.batch_size),
                                     noise_multiplier=0.0, seed=0)
        grads, _ = calibrator.per_example_gradients(list(range(len(records))))  # [N, L, 4]
        norms = grads.flatten(1).norm(dim=1)
        cells = [name, f"{float(norms.median()):.2f}",
                 f"{float(norms.quantile(0.1)):.2f}-{float(norms.quantile(0.9)):.2f}"]
        for groups in args.groups:
            rows_g = groups or layers
            group_of = torch.arange(layers) * rows_g // layers
            summed = torch.zeros(grads.shape[0], rows_g, 4).index_add_(1, group_of, grads)
            flat = summed.flatten(1)
            factor = torch.clamp(args.clip / flat.norm(dim=1, keepdim=True), max=1.0)
            signal = float((flat * factor).mean(0).norm()) / args.clip
            snr = signal * args.batch_size / (sigma * math.sqrt(flat.shape[1]))
            cells.append(f"{signal:.2f} / {snr:.2f}")
        rows.append(cells)
    headers = ["task", "|g| median", "|g| p10-p90"] + [
        f"G={g or layers} s/SNR" for g in args.groups]
    print_table(headers, rows)
    print("\nSNR: clipped-mean norm over noise norm for one step of one participant "
          "(aggregating n participants multiplies it by about sqrt(n)).")
    print_footer()


if __name__ == "__main__":
    main()
