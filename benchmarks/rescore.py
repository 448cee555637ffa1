"""Score a finished sweep's calibrated cells again, on more test queries.

A ``fedctx experiment`` cell scores what it calibrated on ``test_per_class`` class-balanced
queries of the test split: 25 per class in docs/results.md §7-13, i.e. 50 queries on sst2
and subj, where one cell's accuracy has a standard error of about 6 points from the choice
of queries alone. The participants cache what they calibrated
(``<out>/runs/<run key>/p00/*-calibrated.pt``: the injected vector and the coefficients),
so the same calibrated models can be scored again on a larger class-balanced sample, with
no training and no new DP draw: only the query noise changes. Zero-shot rows are scored
again too (no injection), so every gap stays paired on the same queries. I2CL's and
IFed-ICL's protocol uses 500 test queries (``--queries``, the default).

The larger sample is drawn with the cell's own seed (``1000 + seed``, as the harness
does), so it contains the cell's original queries (the first ``test_per_class`` of each
class's shuffled pool). The original queries' accuracy is recomputed from the new
predictions and printed next to the recorded one: a check that the cached state is what the
cell scored (batching differs, so a rare prediction on a near tie may flip).

Rows are written in ``results.jsonl``'s schema to ``<dest>/results.jsonl`` (accuracy,
macro-F1 and ``n_test`` replaced; the recorded ones kept as ``recorded_accuracy`` and
``recorded_n_test``; the mean cross-entropy over the label words added as ``label_ce``), so
``<dest>/report.md`` is the harness's own report (means over seeds, paired gaps) at the new
query count. Resumable: cells already in ``<dest>/results.jsonl`` are skipped. Only cells
evaluated on the test split are read (a validation cell's queries come from the train
split).

    .venv/bin/python benchmarks/rescore.py --config experiments/records_256_seeds.toml \\
        --out runs/records_256_seeds --dest runs/records_256_seeds_q500 [--seeds 2] [--tasks sst2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import print_footer, print_header, print_table, quiet_transformers


def main() -> None:
    import torch

    from coefficient_displacement import calibrated_state
    from fedctx.experiment import ExperimentConfig, Harness, RunSpec
    from fedctx.report import load_rows, markdown
    from participant.data import balanced_sample, load_split
    from participant.evaluation import label_scores, score

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True,
                        help="an experiment config of the out folder (for its data and splits)")
    parser.add_argument("--out", type=Path, required=True, help="its fedctx experiment --out")
    parser.add_argument("--dest", type=Path, required=True, help="folder for the new rows")
    parser.add_argument("--queries", type=int, default=500,
                        help="test queries per task (split evenly over the classes)")
    parser.add_argument("--tasks", nargs="+", default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--participants", type=int, nargs="+", default=None)
    args = parser.parse_args()
    quiet_transformers()
    print_header("Calibrated cells scored again on more test queries", quick=False)

    config = ExperimentConfig.from_toml(args.config)
    harness = Harness(config, args.out)
    lm, sites = harness.model()
    args.dest.mkdir(parents=True, exist_ok=True)
    dest = args.dest / "results.jsonl"
    done = {row["run_key"] for row in load_rows(dest)} if dest.exists() else set()
    spec_fields = RunSpec.__dataclass_fields__
    table = []
    for row in load_rows(args.out / "results.jsonl"):
        if (row["run_key"] in done or row["method"] not in ("fedctx", "zero_shot")
                or row.get("evaluation_split", "test") != "test"
                or (args.tasks and row["task"] not in args.tasks)
                or (args.seeds and row["seed"] not in args.seeds)
                or (args.participants and row["participants"] not in args.participants)):
            continue
        state = None
        if row["method"] == "fedctx":
            state = calibrated_state(args.out, str(row["run_key"]))
            if state is None:
                print(f"  {row['task']} seed {row['seed']} {row['run_key']}: no cached state")
                continue
        spec = RunSpec(**{k: v for k, v in row.items() if k in spec_fields})
        task, _, recorded_queries, data_dir = harness.splits(spec)
        num_classes = len(task.labels)
        local = data_dir if Path(data_dir).exists() else None
        queries = balanced_sample(load_split(task, "test", data_dir=local),
                                  per_class=args.queries // num_classes,
                                  num_classes=num_classes, seed=1000 + int(row["seed"]))
        # load_split reads afresh, so the recorded queries are matched by content
        by_content = {(e.text, e.label): i for i, e in enumerate(queries)}
        recorded = [by_content.get((e.text, e.label)) for e in recorded_queries]
        if None in recorded:
            raise SystemExit(f"{row['task']} seed {row['seed']}: the larger sample does not "
                             "contain the recorded queries (another test_per_class or data?)")
        start = time.perf_counter()
        logits = label_scores(lm, sites, task, [e.text for e in queries],
                              vector=state["vector"] if state else None,
                              coefficients=state["coefficients"] if state else None)
        labels = torch.tensor([e.label for e in queries])
        predictions = logits.argmax(-1).tolist()
        scores = score(predictions, labels.tolist(), num_classes=num_classes)
        again = score([predictions[i] for i in recorded],  # type: ignore[index]
                      [int(labels[i]) for i in recorded],  # type: ignore[index]
                      num_classes=num_classes)
        new = {k: v for k, v in row.items() if k != "uncalibrated_accuracy"}
        new.update(accuracy=scores.accuracy, macro_f1=scores.macro_f1, n_test=scores.n,
                   label_ce=torch.nn.functional.cross_entropy(logits, labels).item(),
                   recorded_accuracy=row["accuracy"], recorded_n_test=row["n_test"],
                   recorded_queries_rescored=again.accuracy)
        with dest.open("a") as handle:
            handle.write(json.dumps(new) + "\n")
        label = row["method"] if row["method"] == "zero_shot" else \
            (f"{row['vector_source']} eps={row['epsilon']:g} {row.get('update_weighting', '')}"
             f" clip {row.get('max_grad_norm', 1.0):g} q {row.get('clip_quantile', 0.0):g}"
             f" {row.get('clip_scale', 'none')}")
        table.append([row["task"], row["participants"], row["seed"], label,
                      f"{100 * row['accuracy']:.1f} / {100 * again.accuracy:.1f}",
                      f"{100 * scores.accuracy:.1f}", f"{new['label_ce']:.3f}",
                      f"{time.perf_counter() - start:.0f}"])
        print(f"  {' '.join(str(c) for c in table[-1])}", flush=True)
    print_table(["task", "participants", "seed", "cell", "recorded / same queries again",
                 f"{args.queries} queries", "label CE", "s"], table, left=4)
    report = args.dest / "report.md"
    report.write_text(markdown(load_rows(dest), command=(
        f"benchmarks/rescore.py --config {args.config} --out {args.out} --dest {args.dest} "
        f"--queries {args.queries}")) + "\n")
    print(f"report: {report}")
    print_footer()


if __name__ == "__main__":
    main()
