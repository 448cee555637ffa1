"""The command line: infer with a calibrated task, privacy report, config errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def test_infer_and_privacy_report(tmp_path: Path, tiny_llama_dir: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from fedctx.cli import main
    from participant.hooks import default_coefficients
    from participant.layers import layer_map_fingerprint, resolve_layer_sites
    from participant.model import load_model
    from privacy.ledger import PrivacyLedger

    lm = load_model(str(tiny_llama_dir))
    sites = resolve_layer_sites(lm.model)
    calibrated = tmp_path / "task.pt"
    torch.save({"vector": torch.zeros(2, sites.num_layers, sites.hidden_size),
                "coefficients": default_coefficients(sites.num_layers), "task": "sst2",
                "model_fingerprint": lm.fingerprint, "layer_map": layer_map_fingerprint(sites)},
               calibrated)
    assert main(["infer", "--calibrated", str(calibrated), "--model", str(tiny_llama_dir),
                 "a good film", "a bad film"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.split("\t")[0] in ("negative", "positive")
                                   for line in lines)

    ledger = PrivacyLedger(tmp_path / "l.jsonl", budget_epsilon=8, delta=1e-5)
    ledger.reserve(release_id="f/vector", description="d", noise_multiplier=1.0, sample_rate=1.0,
                   steps=1, sensitivity="s")
    assert main(["privacy", "report", "--ledger", str(tmp_path / "l.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "f/vector" in out and "reserved" in out and "epsilon spent: " in out

    other = tmp_path / "other"
    from tiny_checkpoint import save_tiny_llama

    save_tiny_llama(other, seed=1)
    assert main(["infer", "--calibrated", str(calibrated), "--model", str(other), "x"]) == 2
    assert "another model" in capsys.readouterr().err


def test_infer_folded_and_hooked_give_the_same_labels(  # type: ignore[no-untyped-def]
        tmp_path: Path, tiny_llama_dir: Path, capsys) -> None:
    from fedctx.cli import main
    from participant.evaluation import label_scores
    from participant.layers import layer_map_fingerprint, resolve_layer_sites
    from participant.model import load_model
    from participant.tasks import load_task

    lm = load_model(str(tiny_llama_dir))
    sites = resolve_layer_sites(lm.model)
    generator = torch.Generator().manual_seed(3)
    vector = torch.randn(2, sites.num_layers, sites.hidden_size, generator=generator)
    coefficients = torch.rand(sites.num_layers, 4, generator=generator) + 0.5
    calibrated = tmp_path / "task.pt"
    torch.save({"vector": vector, "coefficients": coefficients, "task": "sst2",
                "model_fingerprint": lm.fingerprint, "layer_map": layer_map_fingerprint(sites)},
               calibrated)
    texts = ["a good film", "a bad film", "the plot", "it was fine", "dull", "great acting"]
    task = load_task("sst2")
    plain = label_scores(lm, sites, task, texts)
    injected = label_scores(lm, sites, task, texts, vector=vector, coefficients=coefficients)
    assert not torch.allclose(plain, injected, atol=1e-3)
    outputs = {}
    for injection in ("hooks", "fold", "auto"):
        assert main(["infer", "--calibrated", str(calibrated), "--model", str(tiny_llama_dir),
                     "--injection", injection, *texts]) == 0
        captured = capsys.readouterr()
        outputs[injection] = captured.out
        assert ("folded" if injection != "hooks" else "hooks") in captured.err
    expected = "".join(f"{task.labels[i]}\t{t}\n"
                       for i, t in zip(injected.argmax(-1).tolist(), texts, strict=True))
    assert outputs == {"hooks": expected, "fold": expected, "auto": expected}

    # a saved label bias (CalibrationConfig.label_bias) is applied however it injects
    margin = (injected[:, 1] - injected[:, 0]).abs().max().item()
    torch.save({"vector": vector, "coefficients": coefficients, "task": "sst2",
                "model_fingerprint": lm.fingerprint, "layer_map": layer_map_fingerprint(sites),
                "label_bias": torch.tensor([2 * margin + 1.0, 0.0])}, calibrated)
    for injection in ("hooks", "fold"):
        assert main(["infer", "--calibrated", str(calibrated), "--model", str(tiny_llama_dir),
                     "--injection", injection, *texts]) == 0
        assert capsys.readouterr().out == "".join(f"{task.labels[0]}\t{t}\n" for t in texts)


def test_config_errors_are_clear(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from fedctx.cli import main

    bad = tmp_path / "c.toml"
    bad.write_text('[coordinator]\nfederation_id = "f"\nroster = ["a"]\nkeyholder_id = "b"\n'
                   'state_dir = "s"\ntls_cert = "x"\ntls_key = "y"\ntls_ca = "z"\n')
    assert main(["coordinator", "--config", str(bad)]) == 2
    assert "keyholder_id 'b' is not in the roster" in capsys.readouterr().err
    bad.write_text('[coordinator]\nfederation_id = "f"\nbogus = 1\n')
    assert main(["coordinator", "--config", str(bad)]) == 2
    assert "unknown coordinator keys ['bogus']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--vector-source", "nonsense"])


def test_experiment_jobs_runs_cells_in_child_processes_into_one_folder(
        tmp_path: Path, tiny_llama_dir: Path, shared_data: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """``--jobs 2``: each cell in its own ``fedctx experiment --cell`` process, rows in
    the one results file, the report from all of them; a resumed run starts nothing, and
    ``--cell`` refuses a key the grid does not have."""
    import json

    from fedctx.cli import main

    config = tmp_path / "grid.toml"
    config.write_text(
        f'[experiment]\nname = "jobs"\ntasks = ["sst2"]\ndata_root = "{shared_data}"\n'
        f'model = "{tiny_llama_dir}"\nparticipants = [2]\ndirichlet_alpha = [0.0]\n'
        'epsilons = [4.0]\nvector_sources = ["public"]\ncontrol_sources = []\n'
        'baselines = ["zero_shot"]\nrecords_per_participant = 8\nrounds = 1\n'
        'steps_per_round = 1\nbatch_size = 4\ntest_per_class = 2\nmax_grad_norms = [1, 3]\n')
    out = tmp_path / "out"
    args = ["experiment", "--config", str(config), "--out", str(out)]
    assert main([*args, "--jobs", "2"]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted((r["method"], r["max_grad_norm"]) for r in rows) == [
        ("fedctx", 1.0), ("fedctx", 3.0), ("zero_shot", 1.0)]
    assert not (out / "failures.jsonl").exists() and len(list((out / "logs").iterdir())) == 3
    assert "clip 3" in (out / "report.md").read_text()
    assert main([*args, "--jobs", "2"]) == 0
    assert (out / "results.jsonl").read_text().count("\n") == 3
    capsys.readouterr()
    assert main([*args, "--cell", "0123456789abcdef"]) == 2
    assert "is not a cell of" in capsys.readouterr().err
