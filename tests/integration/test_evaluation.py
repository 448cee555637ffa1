"""Stage 3 scoring: label-word logits, the predictions read from them, and the metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def test_predictions_are_the_argmax_of_the_label_scores(tiny_llama_dir: Path,
                                                        shared_data: Path) -> None:
    from tiny_checkpoint import load_tiny_sst2

    from participant.evaluation import label_scores, predict
    from participant.hooks import default_coefficients

    lm, sites, task, records = load_tiny_sst2(tiny_llama_dir, shared_data, n=5)
    texts = [r.text for r in records]
    plain = label_scores(lm, sites, task, texts, batch_size=2)
    assert plain.shape == (5, len(task.labels)) and plain.dtype == torch.float32
    assert predict(lm, sites, task, texts, batch_size=3) == plain.argmax(-1).tolist()

    vector = torch.randn(2, sites.num_layers, sites.hidden_size, generator=torch.Generator()
                         .manual_seed(0))
    coefficients = default_coefficients(sites.num_layers)
    injected = label_scores(lm, sites, task, texts, vector=vector, coefficients=coefficients)
    assert not torch.allclose(injected, plain)  # the injection reaches the label logits
    assert predict(lm, sites, task, texts, vector=vector,
                   coefficients=coefficients) == injected.argmax(-1).tolist()
    assert label_scores(lm, sites, task, []).shape == (0, len(task.labels))

    # a label bias shifts the argmax: a large one for label 1 makes every prediction 1
    bias = torch.tensor([0.0, 1e4])
    assert predict(lm, sites, task, texts, label_bias=bias) == [1] * len(texts)
    assert predict(lm, sites, task, texts, label_bias=torch.zeros(2)) == plain.argmax(-1).tolist()
    with pytest.raises(ValueError, match="label_bias must be"):
        predict(lm, sites, task, texts, label_bias=torch.zeros(3))


def test_score_accuracy_and_macro_f1() -> None:
    from participant.evaluation import score

    scores = score([0, 0, 1, 1], [0, 1, 1, 1], num_classes=3)
    assert scores.accuracy == 0.75 and scores.n == 4
    # class 0: P 1/2, R 1 -> 2/3; class 1: P 1, R 2/3 -> 4/5; class 2 absent -> 0
    assert scores.macro_f1 == pytest.approx((2 / 3 + 4 / 5 + 0) / 3)
    with pytest.raises(ValueError):
        score([0], [0, 1], num_classes=2)
