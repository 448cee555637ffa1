"""Task specifications as data: template, label words, data source (TOML files).

A task needs no code: ``template`` holds ``{text}``; the demonstration string is
``template + " " + label + separator`` (the I2CL reference format) and the query string
is ``template``. Built-in specs live in ``participant/task_specs/*.toml``; any other TOML file
path works the same way.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from .errors import TaskError

_BUILTIN = "participant.task_specs"


@dataclass(frozen=True, slots=True)
class DataSource:
    """Where a task's records come from (first available wins: local, package, hub)."""

    local_name: str = ""
    local_path: str = ""
    package: str = ""
    hf_name: str = ""
    hf_config: str = ""
    train_split: str = "train"
    test_split: str = "test"
    text_field: str = "text"
    label_field: str = "label"
    test_fraction: float = 0.3


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """A classification task: prompt format, verbaliser and data source.

    Attributes:
        labels: label words in class-index order; data labels (strings) must be among
            them, integer labels index into them. Only a word's first token is scored.
        public_texts: text with no private content, formatted with the template to
            build the public reference vector and the per-layer clipping scales.
    """

    name: str
    template: str
    labels: tuple[str, ...]
    separator: str = "\n"
    data: DataSource = field(default_factory=DataSource)
    public_texts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if "{text}" not in self.template:
            raise TaskError(f"task {self.name!r}: template must contain {{text}}")
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise TaskError(f"task {self.name!r}: needs at least two distinct labels")

    def query(self, text: str) -> str:
        """The zero-demonstration prompt for ``text``."""
        return self.template.replace("{text}", text.strip())

    def demonstration(self, text: str, label: int) -> str:
        """One demonstration: ``query + " " + label word + separator``."""
        return f"{self.query(text)} {self.labels[label]}{self.separator}"

    def label_token_ids(self, tokenizer: PreTrainedTokenizerBase) -> list[int]:
        """First token id of each label word as it follows the prompt (leading space).

        Raises:
            TaskError: two label words share their first token.
        """
        ids = []
        for word in self.labels:
            tokens = tokenizer(" " + word, add_special_tokens=False).input_ids
            if not tokens:
                raise TaskError(f"label word {word!r} tokenises to nothing")
            ids.append(int(tokens[0]))
        if len(set(ids)) != len(ids):
            raise TaskError(
                f"task {self.name!r}: label words {self.labels} share a first token under "
                "this tokenizer; choose label words that differ in their first token"
            )
        return ids


def builtin_tasks() -> list[str]:
    """Names of the shipped task specs."""
    return sorted(
        p.name.removesuffix(".toml")
        for p in resources.files(_BUILTIN).iterdir() if p.name.endswith(".toml")
    )


def default_public_texts() -> tuple[str, ...]:
    """Generic sentences written for fedctx (no private data) used when a spec has none."""
    text = resources.files(_BUILTIN).joinpath("public_texts.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def load_task(name_or_path: str) -> TaskSpec:
    """A built-in task by name, or a TOML spec file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.is_file():
        text = path.read_text(encoding="utf-8")
    elif name_or_path in builtin_tasks():
        text = resources.files(_BUILTIN).joinpath(f"{name_or_path}.toml").read_text("utf-8")
    else:
        raise TaskError(
            f"unknown task {name_or_path!r}: built-in tasks are {builtin_tasks()}, or pass a "
            "path to a .toml task spec"
        )
    try:
        table = tomllib.loads(text)["task"]
    except (tomllib.TOMLDecodeError, KeyError) as exc:
        raise TaskError(
            f"task spec {name_or_path!r} is not a valid [task] TOML table: {exc}"
        ) from exc
    data = dict(table.pop("data", {}))
    unknown_data = set(data) - set(DataSource.__dataclass_fields__)
    unknown = set(table) - set(TaskSpec.__dataclass_fields__)
    if unknown or unknown_data:
        raise TaskError(
            f"task spec {name_or_path!r}: unknown keys {sorted(unknown | unknown_data)}"
        )
    if "local_path" in data and path.is_file():
        local = Path(data["local_path"])
        data["local_path"] = str(local if local.is_absolute() else path.parent / local)
    table["labels"] = tuple(table.get("labels", ()))
    table["public_texts"] = tuple(table.get("public_texts", ())) or default_public_texts()
    return TaskSpec(**table, data=DataSource(**data))
