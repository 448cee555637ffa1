"""Stage 3 and metrics: zero-demonstration classification with or without injection."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .data import Example
from .hooks import inject_context
from .layers import LayerSites
from .model import LoadedModel, last_token_logits
from .tasks import TaskSpec


@dataclass(frozen=True, slots=True)
class Scores:
    """Accuracy and macro-F1 on a labelled set, with the time the predictions took."""

    accuracy: float
    macro_f1: float
    n: int
    seconds: float


def label_scores(
    lm: LoadedModel, sites: LayerSites, task: TaskSpec, texts: list[str], *,
    vector: torch.Tensor | None = None, coefficients: torch.Tensor | None = None,
    batch_size: int = 16, progress: bool = False,
) -> torch.Tensor:
    """``[len(texts), C]`` logits of the label words' first tokens at the last token.

    With ``vector`` ``[2, L, d]`` and ``coefficients`` ``[L, 4]`` the context is injected
    at every layer and token; otherwise this is plain zero-shot.
    """
    label_ids = torch.tensor(task.label_token_ids(lm.tokenizer), dtype=torch.long)
    scores: list[torch.Tensor] = []
    for start in tqdm(range(0, len(texts), batch_size), disable=not progress, leave=False,
                      desc="predict"):
        prompts = [task.query(t) for t in texts[start : start + batch_size]]
        enc = lm.encode(prompts, padding=True)
        last = enc["attention_mask"].sum(1) - 1
        hooks = (
            inject_context(lm.model, sites, vector=vector, coefficients=coefficients)
            if vector is not None and coefficients is not None else contextlib.nullcontext()
        )
        with torch.no_grad(), hooks:
            final = last_token_logits(lm.model, enc["input_ids"], enc["attention_mask"], last)
        scores.append(final[:, label_ids.to(final.device)].float().cpu())
    return torch.cat(scores) if scores else torch.empty(0, len(task.labels))


def predict(
    lm: LoadedModel, sites: LayerSites, task: TaskSpec, texts: list[str], *,
    vector: torch.Tensor | None = None, coefficients: torch.Tensor | None = None,
    label_bias: torch.Tensor | None = None, batch_size: int = 16, progress: bool = False,
) -> list[int]:
    """Class index per text: argmax of :func:`label_scores`, plus ``label_bias [C]`` if
    given (``CalibrationConfig.label_bias``)."""
    scores = label_scores(lm, sites, task, texts, vector=vector, coefficients=coefficients,
                          batch_size=batch_size, progress=progress)
    if label_bias is not None:
        if label_bias.shape != (len(task.labels),):
            raise ValueError(f"label_bias must be [{len(task.labels)}], "
                             f"got {tuple(label_bias.shape)}")
        scores = scores + label_bias.float()
    return scores.argmax(dim=-1).tolist()


def score(predictions: list[int], labels: list[int], *, num_classes: int,
          seconds: float = 0.0) -> Scores:
    """Accuracy and macro-F1 (F1 averaged over classes, absent classes counting 0)."""
    if len(predictions) != len(labels) or not labels:
        raise ValueError("predictions and labels must be non-empty and of equal length")
    correct = sum(p == y for p, y in zip(predictions, labels, strict=True))
    f1s = []
    for c in range(num_classes):
        tp = sum(p == c and y == c for p, y in zip(predictions, labels, strict=True))
        fp = sum(p == c and y != c for p, y in zip(predictions, labels, strict=True))
        fn = sum(p != c and y == c for p, y in zip(predictions, labels, strict=True))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return Scores(correct / len(labels), sum(f1s) / num_classes, len(labels), seconds)


def evaluate(
    lm: LoadedModel, sites: LayerSites, task: TaskSpec, examples: list[Example], *,
    vector: torch.Tensor | None = None, coefficients: torch.Tensor | None = None,
    label_bias: torch.Tensor | None = None, batch_size: int = 16, progress: bool = False,
) -> Scores:
    """Predict and score a labelled set."""
    start = time.perf_counter()
    predictions = predict(lm, sites, task, [e.text for e in examples], vector=vector,
                          coefficients=coefficients, label_bias=label_bias,
                          batch_size=batch_size, progress=progress)
    return score(predictions, [e.label for e in examples], num_classes=len(task.labels),
                 seconds=time.perf_counter() - start)


def few_shot_predict(
    lm: LoadedModel, task: TaskSpec, demonstrations: list[Example], texts: list[str], *,
    progress: bool = False,
) -> list[int]:
    """Few-shot ICL baseline: the demonstrations as a prompt prefix, computed once.

    The prefix's key/value cache is reused for every query and cropped back after it,
    so each query costs only its own tokens (as in the I2CL reference's few-shot runs).
    """
    label_ids = torch.tensor(task.label_token_ids(lm.tokenizer), dtype=torch.long)
    prefix = "".join(task.demonstration(e.text, e.label) for e in demonstrations)
    encoded = lm.encode(prefix)
    predictions = []
    with torch.no_grad():
        out = lm.model(**encoded, use_cache=True)
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        prefix_len = encoded["input_ids"].shape[1]
        for text in tqdm(texts, disable=not progress, leave=False, desc="few-shot"):
            query = lm.encode(task.query(text), add_special_tokens=False)
            logits = lm.model(input_ids=query["input_ids"], cache=cache, use_cache=True).logits
            cache.crop(-(cache.get_seq_length() - prefix_len))
            predictions.append(int(logits[0, -1, label_ids.to(logits.device)].argmax()))
    return predictions
