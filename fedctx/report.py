"""Markdown tables and matplotlib plots from an experiment's ``results.jsonl``."""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path


def _label(row: dict[str, object]) -> str:
    if row["method"] == "dp_fedavg_lora":
        eps = float(row["epsilon"])  # type: ignore[arg-type]
        return f"dp_fedavg_lora ({'no DP' if math.isinf(eps) else f'eps={eps:g}'})"
    if row["method"] != "fedctx":
        return str(row["method"])
    eps = float(row["epsilon"])  # type: ignore[arg-type]
    budget = "no DP" if math.isinf(eps) else f"eps={eps:g}"
    clip = ", raw clipping" if row.get("vector_clip_mode", "deviation") == "raw" else ""
    return f"fedctx {row['vector_source']} ({budget}{clip})"


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def load_rows(results: Path) -> list[dict[str, object]]:
    """Rows of a results file (torn lines skipped)."""
    rows = []
    for line in results.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def markdown(rows: list[dict[str, object]], *, command: str = "") -> str:
    """Per-task tables (mean ± std over seeds) plus the mean over tasks."""
    groups: dict[tuple[str, int, float, str], list[dict[str, object]]] = defaultdict(list)
    for row in rows:
        groups[(str(row["task"]), int(row["participants"]), float(row["dirichlet_alpha"]),  # type: ignore[arg-type]
                _label(row))].append(row)
    lines = []
    if command:
        lines += [f"Produced by `{command}`.", ""]
    tasks = sorted({k[0] for k in groups})
    settings = sorted({(k[1], k[2]) for k in groups})
    for participants, alpha in settings:
        split = "IID" if alpha == 0 else f"Dirichlet({alpha:g})"
        lines += [f"### {participants} participants, {split}", "",
                  "| method | " + " | ".join(tasks) + " | mean | epsilon spent | bytes sent / participant |",
                  "|---|" + "---|" * (len(tasks) + 3)]
        labels = sorted({k[3] for k in groups if k[1:3] == (participants, alpha)},
                        key=lambda s: (not s.startswith(("zero", "few", "local", "central")), s))
        for label in labels:
            cells, means, eps, sent = [], [], [], []
            for task in tasks:
                runs = groups.get((task, participants, alpha, label), [])
                accs = [float(r["accuracy"]) for r in runs]  # type: ignore[arg-type]
                cells.append(_mean_std(accs) if accs else "—")
                if accs:
                    means.append(statistics.mean(accs))
                eps += [float(r.get("epsilon_spent", math.inf)) for r in runs]  # type: ignore[arg-type]
                sent += [float(r["bytes_sent_per_participant"]) for r in runs  # type: ignore[arg-type]
                         if "bytes_sent_per_participant" in r]
            mean = f"{100 * statistics.mean(means):.1f}" if len(means) == len(tasks) else "—"
            eps_cell = "∞" if not eps or math.isinf(max(eps)) else f"{max(eps):.3f}"
            if label == "zero_shot":
                eps_cell = "0 (no data)"
            sent_cell = f"{statistics.mean(sent) / 1024:.0f} KiB" if sent else ""
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {mean} | {eps_cell} | {sent_cell} |")
        lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict[str, object]], out: Path) -> list[Path]:
    """Accuracy against epsilon per task (baselines as reference lines); PNG paths."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    for task in sorted({str(r["task"]) for r in rows}):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        task_rows = [r for r in rows if r["task"] == task]
        for source in sorted({str(r["vector_source"]) for r in task_rows if r["method"] == "fedctx"}):
            points = defaultdict(list)
            for r in task_rows:
                if r["method"] == "fedctx" and r["vector_source"] == source:
                    points[float(r["epsilon"])].append(float(r["accuracy"]))  # type: ignore[arg-type]
            finite = sorted(e for e in points if not math.isinf(e))
            if finite:
                ax.plot(finite, [100 * statistics.mean(points[e]) for e in finite], "o-",
                        label=f"fedctx {source}")
            if math.inf in points:
                ax.axhline(100 * statistics.mean(points[math.inf]), ls=":",
                           label=f"fedctx {source}, no DP")
        for method, style in (("zero_shot", "--"), ("few_shot", "-."), ("centralised", ":")):
            accs = [float(r["accuracy"]) for r in task_rows if r["method"] == method]  # type: ignore[arg-type]
            if accs:
                ax.axhline(100 * statistics.mean(accs), ls=style, color="grey", label=method)
        ax.set_xscale("log")
        ax.set_xlabel("epsilon per participant (whole protocol)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(task)
        ax.legend(fontsize=6)
        fig.tight_layout()
        path = out / f"accuracy_vs_epsilon_{task}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written
