"""`gdig finetune`: lowers the loss, LoRA changes only adapter weights, resumes from a checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from gdig.__main__ import main
from gdig.config import ScoreConfig
from gdig.inputs.model import load_model
from gdig.pipeline.finetuning import FinetuneConfig, finetune
from gdig.pipeline.run import score


def _mean_loss(model_dir, data):
    import numpy as np

    out = score(
        ScoreConfig(
            model=str(model_dir),
            candidates=str(data),
            seeds=str(data),
            out=str(model_dir) + "-run",
            hessian="identity",
            umap=False,
            sketch_dim=16,
        )
    )
    import pandas as pd

    return float(np.mean(pd.read_parquet(out / "candidates.parquet")["loss"]))


def test_finetune_lowers_the_loss_and_saves_a_standard_folder(tmp_path, llama_dir, data_files):
    cands, _ = data_files
    before = _mean_loss(llama_dir, cands)
    logs = []
    out = finetune(
        FinetuneConfig(
            model=str(llama_dir),
            data=str(cands),
            out=str(tmp_path / "ft"),
            epochs=4,
            lr=5e-3,
            batch_size=4,
            log_every=2,
        ),
        on_log=logs.append,
    )
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    after = _mean_loss(out, cands)
    assert after < before - 0.5
    assert logs[-1]["step"] == logs[-1]["total"] == 24 and logs[-1]["loss"] < logs[0]["loss"]
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(rows) == 12


def test_lora_changes_only_adapter_weights(tmp_path, llama_dir, data_files):
    from peft import PeftModel

    cands, _ = data_files
    out = finetune(
        FinetuneConfig(
            model=str(llama_dir),
            data=str(cands),
            out=str(tmp_path / "lora"),
            lora=True,
            epochs=2,
            lr=1e-2,
            batch_size=4,
        )
    )
    base, _ = load_model(str(llama_dir), "cpu", "float32")
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    peft = PeftModel.from_pretrained(base, out / "adapter")
    for name, p in peft.named_parameters():
        if "lora_" not in name:
            key = name.replace("base_model.model.", "").replace(".base_layer", "")
            torch.testing.assert_close(p, base_state[key])  # the base weights are untouched
    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # B starts at zero; training moved it
    merged, _ = load_model(str(out), "cpu", "float32")
    diff = [k for k, v in merged.state_dict().items() if not torch.equal(v, base_state[k])]
    assert diff and all(any(s in k for s in ("proj", "lm_head")) for k in diff)


def test_finetune_resumes_from_its_checkpoint(tmp_path, llama_dir, data_files):
    cands, _ = data_files
    cfg = FinetuneConfig(
        model=str(llama_dir),
        data=str(cands),
        out=str(tmp_path / "r"),
        epochs=3,
        lr=5e-3,
        batch_size=4,
        checkpoint_every=5,
        log_every=1,
    )
    full = FinetuneConfig(**{**cfg.__dict__, "out": str(tmp_path / "full")})
    finetune(full)

    def stop(rec):
        if rec["step"] == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(cfg, on_log=stop)
    assert json.loads((tmp_path / "r" / "checkpoint" / "state.json").read_text())["step"] == 5
    seen = []
    finetune(cfg, resume=True, on_log=seen.append)
    assert seen[0]["step"] == 6
    a, _ = load_model(str(tmp_path / "r"), "cpu", "float32")
    b, _ = load_model(str(tmp_path / "full"), "cpu", "float32")
    for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(v, w, rtol=1e-4, atol=1e-5, msg=k)


def test_finetune_cli(tmp_path, llama_dir, data_files, capsys):
    cands, _ = data_files
    out = tmp_path / "cli"
    assert (
        main(
            [
                "finetune",
                "--model",
                str(llama_dir),
                "--data",
                str(cands),
                "--out",
                str(out),
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--lr",
                "1e-3",
            ]
        )
        == 0
    )
    assert (out / "finetune.json").exists()
    assert main(["finetune", "--model", str(llama_dir), "--data", str(cands), "--out", str(out)]) == 2
    assert "already holds a model" in capsys.readouterr().err
