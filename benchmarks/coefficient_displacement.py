"""How far calibration moved the coefficients, and how much of that move is the task's.

Reads finished ``fedctx experiment`` out folders (the calibrated coefficients each cell's
participants cached under ``<out>/runs/<run key>/p00/``) and prints, for every fedctx cell,
the displacement ``d = c - c0`` of the calibrated ``[L, 4]`` coefficients from I2CL's
initial ones, and how it lines up with the displacement ``d_ref`` of the same task and
seed's non-private cell on the same participants' data (same evaluation split, from any of
the folders given; the first folder's where several match):

* ``|d|``: how far calibration moved;
* ``cos``: cosine of ``d`` and ``d_ref``;
* ``share``: ``<d, d_ref> / |d_ref|^2``, the fraction of the non-private move made along
  its direction (1: as far as without DP; 0: none of it, whatever else moved);

each against three non-private references: the paper's (private vector, local AdamW,
uniform mean), the cell's own method (same optimizer and update weighting) with the
private vector, and the cell's own method with the cell's own vector source. The last
isolates DP: under DP the cells inject the public vector, so against the private-vector
references a share below 1 mixes what DP costs with what changing the vector changes.
Where a precision-weighted cell has no precision-weighted non-private reference, the
uniform one of its optimiser stands in: without DP the precision weights are the records
per step, equal for every participant with at least a batch of records.

Under DP a cell's move is the non-private signal (shrunk by whatever the optimiser does
with noise) plus noise, so ``share`` is a direct, query-free reading of how much signal
calibration kept, with none of the test-query noise of an accuracy (which it does not
replace: a move along ``d_ref`` is not an accuracy). The non-private reference injects the
private vector where the DP cells inject the public one; the two vectors differ, so
``share`` of 1 is not expected from them even without noise (the third reference, where
it exists, compares like with like).

    .venv/bin/python benchmarks/coefficient_displacement.py runs/dp_batch_validation_b12
        [more out folders]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from _common import print_footer, print_header, print_table


def calibrated_state(out: Path, run_key: str):  # type: ignore[no-untyped-def]
    """What participant ``p00`` cached for this cell (``coefficients`` ``[L, 4]``,
    ``vector`` ``[2, L, d]``, ...), or None."""
    import torch

    found = sorted((out / "runs" / run_key / "p00").glob("*-calibrated.pt"))
    return torch.load(found[0], weights_only=True) if found else None


def method_of(row: dict,  # type: ignore[type-arg]
              vector_source: str | None = None) -> tuple[str, str, str]:
    """``(optimizer, update weighting, vector source)`` of a cell (rows from before those
    axes used local AdamW and the uniform mean); ``vector_source`` overrides the row's."""
    return (str(row.get("calibration_optimizer", "local_adamw")),
            str(row.get("update_weighting", "uniform")),
            vector_source or str(row["vector_source"]))


PAPER = ("local_adamw", "uniform", "private")


def same_data(row: dict, other: dict) -> bool:  # type: ignore[type-arg]
    """Same participants' records and queries (rows from before the evaluation-split
    option were scored on the test split)."""
    return (all(row.get(k) == other.get(k)
                for k in ("task", "seed", "participants", "dirichlet_alpha"))
            and row.get("evaluation_split", "test") == other.get("evaluation_split", "test"))


def main() -> None:
    import torch

    from participant.hooks import default_coefficients

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outs", nargs="+", type=Path, help="fedctx experiment --out folders")
    args = parser.parse_args()
    print_header("Calibrated coefficients: displacement and its non-private share",
                 quick=False, torch_threads=False)
    cells = []
    for out in args.outs:
        if not (out / "results.jsonl").exists():
            print(f"{out}: no results.jsonl (no finished cell), skipped")
            continue
        for line in (out / "results.jsonl").read_text().splitlines():
            row = json.loads(line)
            if row.get("method") != "fedctx" or "run_key" not in row:
                continue
            state = calibrated_state(out, row["run_key"])
            if state is not None:
                coefficients = state["coefficients"]
                move = coefficients - default_coefficients(coefficients.shape[0])
                cells.append((out.name, row, move.flatten()))
    table = []
    for folder, row, move in cells:
        references = {method_of(r): m for _, r, m in reversed(cells)
                      if math.isinf(r["epsilon"]) and same_data(r, row)}
        readings = []
        for reference in (PAPER, method_of(row, "private"), method_of(row)):
            ref = references.get(reference, references.get((reference[0], "uniform",
                                                            reference[2])))
            readings += ["—", "—"] if ref is None else [
                f"{torch.nn.functional.cosine_similarity(move, ref, dim=0).item():.2f}",
                f"{(move @ ref / (ref @ ref)).item():.2f}"]
        optimizer, weighting, source = method_of(row)
        eps = "no DP" if math.isinf(row["epsilon"]) else f"{row['epsilon']:g}"
        table.append([folder, row["task"], row["seed"], eps, source, optimizer, weighting,
                      f"{100 * row['accuracy']:.1f}", f"{move.norm().item():.3f}", *readings])
    table.sort(key=lambda r: (r[1], r[2], r[0], r[5], r[4], r[3]))
    print_table(["out folder", "task", "seed", "epsilon", "vector", "optimizer", "weighting",
                 "accuracy", "|d|", "cos, paper", "share, paper", "cos, same method",
                 "share, same method", "cos, same method and vector",
                 "share, same method and vector"], table, left=7)
    print_footer()


if __name__ == "__main__":
    main()
