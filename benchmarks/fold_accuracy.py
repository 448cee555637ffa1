"""How closely a folded injection reproduces the hooks, in float32 and bfloat16.

Run: ``.venv/bin/python benchmarks/fold_accuracy.py [--quick] [--device cuda]``.

``fedctx infer`` (on a CPU, by default) folds the context vector and coefficients into the output
projections (``participant.folding.fold_context``) instead of hooking every layer. In exact
arithmetic both compute the same function; in floating point the hooks round ``beta * out +
lambda * v`` after the projection while the fold rounds ``beta * W`` and ``beta * b +
lambda * v`` in the weights. This script measures the difference on the default model:
the label-word logits of class-balanced sst2 test queries, with the task's public reference
vector and fixed random coefficients of calibrated magnitude (lambda in [0, 0.4], beta in
[0.8, 1.2]), for hooks and fold in float32 and in bfloat16, each against float32 hooks.
Reported: relative L2 error, largest absolute error, and how often the predicted class
agrees with the float32 hooks.
"""

from __future__ import annotations

import argparse

import torch

from _common import (
    SHARED_DATA,
    print_footer,
    print_header,
    print_table,
    quiet_transformers,
    set_torch_threads,
)
from participant.context_vectors import public_reference
from participant.data import balanced_sample, load_split
from participant.evaluation import label_scores
from participant.folding import fold_context
from participant.hooks import default_coefficients
from participant.layers import resolve_layer_sites
from participant.model import load_model
from participant.tasks import load_task


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, score the four conditions, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 queries instead of 200")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu", help="where the model runs (cpu, cuda...)")
    parser.add_argument("--data-dir", default=str(SHARED_DATA / "sst2"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args(argv)
    queries = 16 if args.quick else args.queries
    set_torch_threads(args.threads or None)
    quiet_transformers()
    print_header("folded injection against the hooks", quick=args.quick)
    task = load_task("sst2")
    test = balanced_sample(load_split(task, "test", data_dir=args.data_dir),
                           per_class=queries // len(task.labels),
                           num_classes=len(task.labels), seed=0)
    texts = [e.text for e in test]

    scores: dict[tuple[str, str], torch.Tensor] = {}
    vector = coefficients = None
    for dtype in ("float32", "bfloat16"):
        lm = load_model(args.model, dtype=dtype, device=args.device)
        sites = resolve_layer_sites(lm.model)
        if vector is None:  # built once, in float32, and shared by both dtypes
            vector = public_reference(lm, sites, task).vector
            generator = torch.Generator().manual_seed(0)
            coefficients = default_coefficients(sites.num_layers)
            coefficients[:, 0::2] = torch.rand(sites.num_layers, 2, generator=generator) * 0.4
            coefficients[:, 1::2] = torch.rand(sites.num_layers, 2, generator=generator) * 0.4 + 0.8
        scores[dtype, "hooks"] = label_scores(lm, sites, task, texts, vector=vector,
                                              coefficients=coefficients)
        fold_context(lm.model, sites, vector=vector, coefficients=coefficients)
        scores[dtype, "fold"] = label_scores(lm, sites, task, texts)

    reference = scores["float32", "hooks"]
    rows = []
    for (dtype, how), value in scores.items():
        if (dtype, how) == ("float32", "hooks"):
            continue
        error = value - reference
        agree = (value.argmax(-1) == reference.argmax(-1)).float().mean()
        rows.append([f"{how}, {dtype}", f"{float(error.norm() / reference.norm()):.2e}",
                     f"{float(error.abs().max()):.3f}", f"{100 * float(agree):.1f}%"])
    print_table(["injection", "rel. L2 error", "max |error|", "same class"], rows,
                title=f"Label-word logits of {len(texts)} sst2 test queries against float32 hooks "
                      f"(mean |logit| {float(reference.abs().mean()):.1f})")
    print_footer()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
