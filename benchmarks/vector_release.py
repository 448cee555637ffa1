"""Where the context-vector budget goes: clipping raw vectors vs deviations from a public reference.

For each task, one participant's demonstrations are released as a DP mean at a fixed
epsilon (a single Gaussian release, Opacus RDP accounting) in two ways:
- raw: each record's activations, whitened per block, clipped, noised;
- deviation (fedctx's default): each record's deviation from the public reference;
- deviation+JS: the same release shrunk block by block towards the public reference by
  its positive-part James-Stein factor (`vector_denoise = "james_stein"`; post-processing
  from the known noise variance, no budget spent).
Clip norms come from public text only (the median whitened norm of the public
demonstrations in each mode). Reported: relative L2 error of the released mean vector
against the non-private mean, and cosine similarity of the released *task signal* (mean
minus public reference) with the non-private one, averaged over 10 noise draws.

    .venv/bin/python benchmarks/vector_release.py [--epsilon 8] [--demos-per-class 8]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from participant.context_vectors import (
    aggregate_noise_variance,
    last_token_activations,
    private_deviation_mean,
    public_reference,
)
from participant.data import balanced_sample, load_split
from participant.layers import resolve_layer_sites
from participant.model import load_model
from participant.tasks import load_task
from privacy.accounting import PlannedRelease, noise_multiplier_for_budget
from privacy.denoise import james_stein_blocks


def _median_whitened_norm(acts: torch.Tensor, center: torch.Tensor, scales: torch.Tensor) -> float:
    n = acts.shape[0]
    dev = (acts.double() - center.double()).reshape(n, scales.numel(), -1)
    return float((dev / scales.double()[None, :, None]).reshape(n, -1).norm(dim=1).median())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--demos-per-class", type=int, default=8)
    parser.add_argument("--tasks", nargs="+", default=["sst2", "subj", "agnews", "trec"])
    parser.add_argument("--data-root", default="../shared/data")
    args = parser.parse_args()
    sigma = noise_multiplier_for_budget(target_epsilon=args.epsilon, target_delta=args.delta,
                                        plan=[PlannedRelease(sample_rate=1.0, steps=1)])
    lm = load_model()
    sites = resolve_layer_sites(lm.model)
    print(f"epsilon {args.epsilon} delta {args.delta}: noise multiplier {sigma:.3f}; "
          f"{args.demos_per_class} demonstrations per class")
    print(f"{'task':<8}{'N':>4}{'mode':>14}{'clip':>9}{'rel. error':>12}{'signal cos':>12}")
    for name in args.tasks:
        task = load_task(name)
        train = load_split(task, "train", data_dir=f"{args.data_root}/{name}")
        demos = balanced_sample(train, per_class=args.demos_per_class,
                                num_classes=len(task.labels), seed=0)
        acts = last_token_activations(lm, sites,
                                      [task.demonstration(e.text, e.label) for e in demos])
        reference = public_reference(lm, sites, task)
        public_acts = last_token_activations(lm, sites, [
            task.demonstration(t, label) for t in task.public_texts
            for label in range(len(task.labels))])
        true_mean = acts.double().mean(0)
        true_signal = (true_mean - reference.vector.double()).flatten()
        zero = reference.centred_at_zero()
        for mode, ref in (("raw", zero), ("deviation", reference), ("deviation+JS", reference)):
            clip = _median_whitened_norm(public_acts, ref.vector, reference.block_scales)
            errors, cosines = [], []
            for draw in range(10):
                generator = torch.Generator().manual_seed(draw)
                deviation = private_deviation_mean(
                    acts, ref, clip_norm=clip, noise_multiplier=sigma, generator=generator)
                if mode == "deviation+JS":
                    variance = aggregate_noise_variance(
                        noise_multiplier=sigma, clip_norm=clip, block_scales=ref.block_scales,
                        count_moment=1.0 / len(demos) ** 2)
                    shrunk, _ = james_stein_blocks(
                        deviation.reshape(variance.size, -1).numpy(), noise_variance=variance)
                    deviation = torch.from_numpy(shrunk).reshape(deviation.shape)
                released = ref.vector.double() + deviation
                errors.append(float((released - true_mean).norm() / true_mean.norm()))
                signal = (released - reference.vector.double()).flatten()
                cosines.append(float(torch.nn.functional.cosine_similarity(
                    signal, true_signal, dim=0)))
            print(f"{name:<8}{len(demos):>4}{mode:>14}{clip:>9.1f}"
                  f"{statistics.mean(errors):>12.3f}{statistics.mean(cosines):>12.3f}")


if __name__ == "__main__":
    main()
