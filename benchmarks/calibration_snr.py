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

- for the per-record clip scales (``clip_scale``: none, residual, residual_capped; G = L),
  the records' residuals ``||p - onehot(y)|| / sqrt(2)`` and how many the coefficients
  already classify, then per scale the signal ``s``, its cosine with the *unclipped* mean
  gradient (what the non-private calibration follows: 1 means the clip costs no
  direction) and the step's SNR. ``--at`` takes the coefficients (and vector) from a
  ``*-calibrated.pt``, to read the same figures where a calibration ended instead of at
  the initial coefficients.

    .venv/bin/python benchmarks/calibration_snr.py [--epsilon 8] [--records 48]
    .venv/bin/python benchmarks/calibration_snr.py --tasks trec --at <run>/p00/*-calibrated.pt
"""

from __future__ import annotations

import argparse
import math

import torch

from _common import print_footer, print_header, print_table, quiet_transformers
from participant.calibration import (
    CLIP_SCALES,
    CalibrationConfig,
    LocalCalibrator,
    per_layer,
    residual_clip_scales,
)
from participant.context_vectors import public_reference
from participant.data import balanced_sample, load_split
from participant.evaluation import predict
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
    parser.add_argument("--clip-scales", nargs="+", default=list(CLIP_SCALES),
                        choices=CLIP_SCALES)
    parser.add_argument("--at", default=None,
                        help="a *-calibrated.pt: its coefficients and vector (one task)")
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
    saved = torch.load(args.at, weights_only=True) if args.at else None
    if saved is not None:
        if len(args.tasks) != 1 or saved["task"] != args.tasks[0]:
            parser.error(f"--at holds task {saved['task']!r}: pass --tasks {saved['task']}")
        if saved["model_fingerprint"] != lm.fingerprint:
            parser.error("--at was calibrated on another model")
        print(f"at the coefficients and vector of {args.at}\n")
    rows, scale_rows = [], []
    for name in args.tasks:
        task = load_task(name)
        train = load_split(task, "train", data_dir=f"{args.data_root}/{name}")
        records = balanced_sample(train, per_class=args.records // len(task.labels),
                                  num_classes=len(task.labels), seed=0)
        vector = saved["vector"] if saved else public_reference(lm, sites, task).vector
        calibrator = LocalCalibrator(lm, sites, task, records, vector,
                                     config=CalibrationConfig(batch_size=args.batch_size),
                                     noise_multiplier=0.0, seed=0)
        if saved is not None:
            with torch.no_grad():
                calibrator.coefficients.copy_(saved["coefficients"])
        grads, _, residuals = calibrator.per_example_gradients_and_residuals(
            list(range(len(records))))  # [N, L, 4], [N]
        predicted = predict(lm, sites, task, [r.text for r in records], vector=vector,
                            coefficients=per_layer(calibrator.coefficients.detach(), layers))
        classified = sum(p == r.label for p, r in zip(predicted, records, strict=True))
        scale_rows.append(_clip_scale_cells(
            name, grads, residuals, classified=classified / len(records),
            num_classes=calibrator._loss_classes(),
            scales=args.clip_scales, clip=args.clip, batch=args.batch_size, sigma=sigma))
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
          "(aggregating n participants multiplies it by about sqrt(n)).\n")
    print_table(["task", "classified", "residual median (p10-p90)"] + [
        f"{scale}: s / cos / SNR" for scale in args.clip_scales], scale_rows)
    print("\nclassified: share of the records whose label the coefficients already rank "
          "first; cos: the clipped mean's cosine with the unclipped mean gradient.")
    print_footer()


def _clip_scale_cells(name: str, grads: torch.Tensor, residuals: torch.Tensor, *,
                      classified: float, num_classes: int, scales: list[str], clip: float,
                      batch: int, sigma: float) -> list[str]:
    """One row of the clip-scale table: grads ``[N, L, 4]``, residuals ``[N]`` in [0, 1]."""
    flat = grads.flatten(1).double()
    unclipped = flat.mean(0)
    norms = flat.norm(dim=1, keepdim=True).clamp(min=1e-12)
    cells = [name, f"{classified:.0%}",
             f"{float(residuals.median()):.2f} ({float(residuals.quantile(0.1)):.2f}-"
             f"{float(residuals.quantile(0.9)):.2f})"]
    for scale in scales:
        factor = torch.ones_like(residuals, dtype=torch.float64) if scale == "none" else \
            residual_clip_scales(residuals.double(), clip_scale=scale, num_classes=num_classes)
        clipped = flat * torch.clamp(clip * factor.unsqueeze(1) / norms, max=1.0)
        mean = clipped.mean(0)
        signal = float(mean.norm()) / clip
        cos = float(torch.nn.functional.cosine_similarity(mean, unclipped, dim=0))
        snr = signal * batch / (sigma * math.sqrt(flat.shape[1]))
        cells.append(f"{signal:.3f} / {cos:.2f} / {snr:.2f}")
    return cells


if __name__ == "__main__":
    main()
