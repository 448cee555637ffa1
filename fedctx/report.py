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
        return str(row["method"]) + _groups(row)
    eps = float(row["epsilon"])  # type: ignore[arg-type]
    budget = "no DP" if math.isinf(eps) else f"eps={eps:g}"
    series = str(_series(row))
    variant = series[series.find(","):] if "," in series else ""
    return f"fedctx {row['vector_source']} ({budget}{variant})"


def _mean_std(values: list[float], *, signed: bool = False) -> str:
    """Percentages: the value, or mean ± sample std when there are several."""
    sign = "+" if signed else ""
    if len(values) == 1:
        return f"{100 * values[0]:{sign}.1f}"
    return f"{100 * statistics.mean(values):{sign}.1f} ± {100 * statistics.stdev(values):.1f}"


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
    """Per-task tables (mean ± std over seeds), the mean over tasks (± std over the seeds
    that have every task), and each method's gap to non-private fedctx paired by seed."""
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
        labels = sorted({k[3] for k in groups if k[1:3] == (participants, alpha)},
                        key=lambda s: (not s.startswith(("zero", "few", "local", "central")), s))
        lines += [f"### {participants} participants, {split}", "", "Accuracy (%):", "",
                  *_method_table(groups, tasks, (participants, alpha), labels, "accuracy"), "",
                  *_paired_gaps(groups, tasks, participants, alpha, labels)]
        if any("macro_f1" in r for k, runs in groups.items() if k[1:3] == (participants, alpha)
               for r in runs):
            lines += ["Macro-F1 (%):", "",
                      *_method_table(groups, tasks, (participants, alpha), labels, "macro_f1"),
                      ""]
    cells = calibration_table(rows)
    if cells:
        lines += ["### Every fedctx cell: before and after calibration", "", cells]
    costs = cost_table(rows)
    if costs:
        lines += ["### Per-round cost of the federated runs (mean over participants and rounds)",
                  "", costs]
    return "\n".join(lines)


def _method_table(groups, tasks: list[str], setting: tuple[int, float],  # type: ignore[no-untyped-def]
                  labels: list[str], metric: str) -> list[str]:
    """One line per method: ``metric`` per task (mean ± std over seeds) and over the tasks;
    the accuracy table also carries the epsilon spent and the bytes sent."""
    costs = metric == "accuracy"
    lines = ["| method | " + " | ".join(tasks) + " | mean |"
             + (" epsilon spent | bytes sent / participant |" if costs else ""),
             "|---|" + "---|" * (len(tasks) + 1 + 2 * costs)]
    for label in labels:
        cells, means, eps, sent = [], [], [], []
        for task in tasks:
            runs = groups.get((task, *setting, label), [])
            values = [float(r[metric]) for r in runs if metric in r]
            cells.append(_mean_std(values) if values else "—")
            if values:
                means.append(statistics.mean(values))
            eps += [float(r.get("epsilon_spent", math.inf)) for r in runs]
            sent += [float(r["bytes_sent_per_participant"]) for r in runs
                     if "bytes_sent_per_participant" in r]
        per_seed = _task_means_per_seed(groups, tasks, (*setting, label), metric)
        if len(per_seed) > 1:
            mean = _mean_std(list(per_seed.values()))
        else:
            mean = f"{100 * statistics.mean(means):.1f}" if len(means) == len(tasks) else "—"
        line = f"| {label} | " + " | ".join(cells) + f" | {mean} |"
        if costs:
            eps_cell = "∞" if not eps or math.isinf(max(eps)) else f"{max(eps):.3f}"
            if label == "zero_shot":
                eps_cell = "0 (no data)"
            sent_cell = f"{statistics.mean(sent) / 1024:.0f} KiB" if sent else ""
            line += f" {eps_cell} | {sent_cell} |"
        lines.append(line)
    return lines


#: The reference of the paired gaps: non-private fedctx as the paper runs it.
GAP_REFERENCE = "fedctx private (no DP)"


def _task_means_per_seed(groups, tasks: list[str], setting: tuple[int, float, str],  # type: ignore[no-untyped-def]
                         metric: str = "accuracy") -> dict[int, float]:
    """``metric`` averaged over ``tasks`` for each seed that has a run of every task."""
    participants, alpha, label = setting
    by_seed: dict[int, list[float]] = defaultdict(list)
    for task in tasks:
        for run in groups.get((task, participants, alpha, label), []):
            if metric in run:
                by_seed[int(run["seed"])].append(float(run[metric]))
    return {seed: statistics.mean(accs) for seed, accs in sorted(by_seed.items())
            if len(accs) == len(tasks)}


def _paired_gaps(groups, tasks: list[str], participants: int, alpha: float,  # type: ignore[no-untyped-def]
                 labels: list[str]) -> list[str]:
    """Each method's mean over the tasks minus :data:`GAP_REFERENCE`'s, seed by seed (the
    same split and test queries), then mean ± std over the seeds both have: the statistic
    a privacy-utility target is about, without the between-seed spread of the levels."""
    reference = _task_means_per_seed(groups, tasks, (participants, alpha, GAP_REFERENCE))
    if not reference:
        return []
    lines = [f"Paired with {GAP_REFERENCE}: the mean accuracy over the tasks minus the "
             "reference's, on the same seed (split and test queries).", "",
             "| method | seeds | gap (points) | per seed |", "|---|---|---|---|"]
    for label in labels:
        if label == GAP_REFERENCE:
            continue
        own = _task_means_per_seed(groups, tasks, (participants, alpha, label))
        gaps = {seed: own[seed] - reference[seed] for seed in own if seed in reference}
        if gaps:
            per_seed = ", ".join(f"{seed}: {100 * gap:+.1f}" for seed, gap in gaps.items())
            lines.append(f"| {label} | {len(gaps)} | {_mean_std(list(gaps.values()), signed=True)} "
                         f"| {per_seed} |")
    return [*lines, ""] if len(lines) > 4 else []


def _groups(row: dict[str, object]) -> str:
    groups = int(row.get("coefficient_groups", 0) or 0)  # type: ignore[call-overload]
    return f" ({groups} coefficient groups)" if groups else ""


def _clip(row: dict[str, object]) -> str:
    quantile = float(row.get("clip_quantile", 0.0) or 0.0)  # type: ignore[arg-type]
    clip = float(row.get("max_grad_norm", 1.0))  # type: ignore[arg-type]
    scale = row.get("clip_scale", "none")
    scaled = "" if scale in ("none", None) else f", {str(scale).replace('_', '-')}-scaled"
    if quantile:
        return f", clip to the {quantile:g} quantile"
    return (f", clip {clip:g}" if clip != 1.0 else "") + scaled


def _noise_seed(row: dict[str, object]) -> str:
    seed = int(row.get("noise_seed", -1))  # type: ignore[call-overload]
    return f", noise seed {seed}" if seed >= 0 else ""


def _noise_model(row: dict[str, object]) -> str:
    model = str(row.get("noise_model", "local"))
    if model == "central_simulated":
        return ", central noise (simulated)"
    if model.startswith("distributed:"):
        return f", distributed noise (up to {model.removeprefix('distributed:')} colluding)"
    return ""


def _series(row: dict[str, object]) -> str | None:
    """The line a row belongs to on an accuracy-against-epsilon plot (None: a baseline)."""
    if row["method"] == "fedctx":
        variant = "".join((
            ", raw clipping" if row.get("vector_clip_mode", "deviation") == "raw" else "",
            ", James-Stein" if row.get("vector_denoise", "none") == "james_stein" else "",
            _groups(row).replace(" (", ", ").rstrip(")"),
            ", precision-weighted" if row.get("update_weighting") == "precision" else "",
            ", global Adam" if row.get("calibration_optimizer") == "global_adam" else "",
            _clip(row), _noise_seed(row),
            _noise_model(row),
            ", balanced label bias" if row.get("label_bias", "none") == "balanced" else ""))
        return f"fedctx {row['vector_source']}{variant}"
    if row["method"] == "dp_fedavg_lora":
        return "dp_fedavg_lora"
    return None


def calibration_table(rows: list[dict[str, object]]) -> str:
    """One line per fedctx run: accuracy with the federated vector and I2CL's initial
    coefficients, after calibration, and what the privacy cost."""
    fed = [r for r in rows if r["method"] == "fedctx" and "uncalibrated_accuracy" in r]
    if not fed:
        return ""
    lines = ["| task | participants | seed | run | injected, initial coefficients | calibrated "
             "| epsilon spent | noise multiplier | vector shrinkage (mean factor) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(fed, key=lambda r: (str(r["task"]), int(r["participants"]), _label(r),  # type: ignore[arg-type]
                                         int(r["seed"]))):  # type: ignore[arg-type]
        spent = float(r.get("epsilon_spent", math.inf))  # type: ignore[arg-type]
        shrink = r.get("vector_shrinkage") or {}
        shrink_cell = f"{float(shrink['mean']):.3f}" if shrink else ""  # type: ignore[index]
        lines.append(
            f"| {r['task']} | {r['participants']} | {r['seed']} | {_label(r)} "
            f"| {100 * float(r['uncalibrated_accuracy']):.1f} "  # type: ignore[arg-type]
            f"| {100 * float(r['accuracy']):.1f} "  # type: ignore[arg-type]
            f"| {'∞' if math.isinf(spent) else f'{spent:.3f}'} "
            f"| {_noise_cell(r)} "
            f"| {shrink_cell} |")
    return "\n".join(lines) + "\n"


def _noise_cell(row: dict[str, object]) -> str:
    """Participant 0's noise multiplier, with the participants' range where they differ."""
    cell = f"{float(row.get('noise_multiplier', 0.0)):.3f}"  # type: ignore[arg-type]
    low, high = row.get("noise_multiplier_range") or (None, None)  # type: ignore[misc]
    if low is not None and f"{float(low):.3f}" != f"{float(high):.3f}":
        cell += f" ({float(low):.3f}-{float(high):.3f})"
    return cell


def cost_table(rows: list[dict[str, object]]) -> str:
    """Per-round upload and client compute of the federated methods (rows that carry them)."""
    groups: dict[tuple[str, str], list[dict[str, object]]] = defaultdict(list)
    for row in rows:
        if "bytes_per_round" in row:
            groups[(str(row["task"]), _label(row))].append(row)
    if not groups:
        return ""
    lines = ["| task | method | accuracy | rounds | bytes sent / round | client s / round |",
             "|---|---|---|---|---|---|"]
    for (task, label), runs in sorted(groups.items()):
        sent = statistics.mean(float(r["bytes_per_round"]) for r in runs)  # type: ignore[arg-type]
        secs = statistics.mean(float(r["client_seconds_per_round"]) for r in runs)  # type: ignore[arg-type]
        rounds = runs[0].get("rounds_released", runs[0].get("lora", {}).get("rounds", ""))  # type: ignore[union-attr]
        accs = [float(r["accuracy"]) for r in runs]  # type: ignore[arg-type]
        lines.append(f"| {task} | {label} | {_mean_std(accs)} | {rounds} | "
                     f"{sent / 1024:.1f} KiB | {secs:.1f} |")
    return "\n".join(lines) + "\n"


def _pyplot():  # type: ignore[no-untyped-def]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _finish(plt, fig, ax, title: str, xlabel: str, path: Path) -> Path:  # type: ignore[no-untyped-def]
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# Baselines drawn as horizontal reference lines, and their line styles.
BASELINE_STYLES = {"zero_shot": "--", "few_shot": "-.", "centralised": ":",
                   "local_only": (0, (1, 3))}
# Baselines that see no participant's data, so their accuracy does not depend on the count.
COUNT_FREE_BASELINES = ("zero_shot", "few_shot")


def _reference_lines(ax, rows: list[dict[str, object]], methods) -> None:  # type: ignore[no-untyped-def]
    """One grey horizontal line per baseline in ``methods`` present in ``rows`` (mean)."""
    for method in methods:
        accs = [float(r["accuracy"]) for r in rows if r["method"] == method]  # type: ignore[arg-type]
        if accs:
            ax.axhline(100 * statistics.mean(accs), ls=BASELINE_STYLES[method], color="grey",
                       label=method)


def plot(rows: list[dict[str, object]], out: Path) -> list[Path]:
    """Accuracy against epsilon per task (one line per federated method, its no-DP run and
    the baselines as reference lines), and accuracy against participant count where the
    grid has several counts; PNG paths."""
    plt = _pyplot()
    if plt is None:
        return []
    written = []
    for task in sorted({str(r["task"]) for r in rows}):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        task_rows = [r for r in rows if r["task"] == task]
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for index, series in enumerate(sorted({s for r in task_rows if (s := _series(r))})):
            color = colors[index % len(colors)]  # a series' line and its no-DP level match
            points = defaultdict(list)
            for r in task_rows:
                if _series(r) == series:
                    points[float(r["epsilon"])].append(float(r["accuracy"]))  # type: ignore[arg-type]
            finite = sorted(e for e in points if not math.isinf(e))
            if finite:  # error bars: std over seeds, where a budget has several runs
                ax.errorbar(finite, [100 * statistics.mean(points[e]) for e in finite],
                            yerr=[100 * statistics.stdev(points[e]) if len(points[e]) > 1 else 0.0
                                  for e in finite], fmt="o-", capsize=3, color=color,
                            label=series)
            if math.inf in points:
                ax.axhline(100 * statistics.mean(points[math.inf]), ls=":", color=color,
                           label=f"{series}, no DP")
        _reference_lines(ax, task_rows, BASELINE_STYLES)
        ax.set_xscale("log")
        budgets = sorted({float(r["epsilon"]) for r in task_rows  # type: ignore[arg-type]
                          if _series(r) and not math.isinf(float(r["epsilon"]))})  # type: ignore[arg-type]
        if budgets:
            ax.set_xticks(budgets, [f"{e:g}" for e in budgets])
            ax.minorticks_off()
        written.append(_finish(plt, fig, ax, task, "epsilon per participant (whole protocol)",
                               out / f"accuracy_vs_epsilon_{task}.png"))
    return written + plot_participants(rows, out)


def plot_participants(rows: list[dict[str, object]], out: Path) -> list[Path]:
    """Accuracy against participant count per task, one line per method and budget (only
    for tasks run with more than one count); zero-shot and few-shot, which see no
    participant's data, are reference lines at their mean over whatever counts ran them.
    PNG paths."""
    plt = _pyplot()
    if plt is None:
        return []
    written = []
    for task in sorted({str(r["task"]) for r in rows}):
        all_rows = [r for r in rows if r["task"] == task]
        task_rows = [r for r in all_rows if r["method"] not in COUNT_FREE_BASELINES]
        if len({int(r["participants"]) for r in task_rows}) < 2:  # type: ignore[arg-type]
            continue
        fig, ax = plt.subplots(figsize=(5, 3.5))
        _reference_lines(ax, all_rows, COUNT_FREE_BASELINES)
        for label in sorted({_label(r) for r in task_rows}):
            points = defaultdict(list)
            for r in task_rows:
                if _label(r) == label:
                    points[int(r["participants"])].append(float(r["accuracy"]))  # type: ignore[arg-type]
            counts = sorted(points)
            style = "o-" if len(counts) > 1 else "o"
            ax.plot(counts, [100 * statistics.mean(points[n]) for n in counts], style, label=label)
        written.append(_finish(plt, fig, ax, task, "participants",
                               out / f"accuracy_vs_participants_{task}.png"))
    return written
