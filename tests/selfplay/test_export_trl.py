"""The `hf` export is a dataset TRL's DPOTrainer trains on (one CPU step on a tiny model)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from typer.testing import CliRunner

from selfplay.cli import app
from selfplay.config import TinyModelConfig
from selfplay.tiny_model import build_model, build_tokenizer

pytestmark = pytest.mark.heavy


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_hf_export_loads_and_trains_one_dpo_step(seeded_url, tmp_path):
    import datasets
    from trl import DPOConfig, DPOTrainer

    out = tmp_path / "pairs_hf"
    result = CliRunner().invoke(
        app, ["db", "export", str(out), "--db", seeded_url, "--format", "hf"]
    )
    assert result.exit_code == 0 and "exported 12 pairs" in result.output, result.output

    ds = datasets.load_from_disk(str(out))
    assert ds.num_rows == 12
    assert {"prompt", "chosen", "rejected", "margin", "pair_id", "checkpoint_id"} <= set(
        ds.column_names
    )
    assert ds[0]["chosen"].startswith("A")

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    model = build_model(
        TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), tokenizer
    )
    before = [p.detach().clone() for p in model.parameters()]
    args = DPOConfig(
        output_dir=str(tmp_path / "trl"),
        max_steps=1,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
    )
    # A reference given as a model: TRL would otherwise reload the policy's config from the Hub.
    ref = copy.deepcopy(model)
    trainer = DPOTrainer(
        model=model, ref_model=ref, args=args, train_dataset=ds, processing_class=tokenizer
    )
    trainer.train()
    assert trainer.state.global_step == 1
    loss = trainer.state.log_history[0]["loss"]
    assert math.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_conversational_hf_export_trains_one_dpo_step_through_the_chat_template(
    conversation_url, chat_model_dir, tmp_path
):
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer
    from trl.data_utils import is_conversational

    out = tmp_path / "pairs_hf"
    result = CliRunner().invoke(
        app, ["db", "export", str(out), "--db", conversation_url, "--format", "hf"]
    )
    assert result.exit_code == 0 and "exported 12 pairs" in result.output, result.output
    ds = datasets.load_from_disk(str(out))
    assert all(is_conversational(row) for row in ds)
    assert ds[0]["chosen"][0]["role"] == "assistant"

    tokenizer = AutoTokenizer.from_pretrained(chat_model_dir)
    model = AutoModelForCausalLM.from_pretrained(chat_model_dir, dtype=torch.float32)
    before = [p.detach().clone() for p in model.parameters()]
    args = DPOConfig(
        output_dir=str(tmp_path / "trl"),
        max_steps=1,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
    )
    trainer = DPOTrainer(
        model=model,
        ref_model=copy.deepcopy(model),
        args=args,
        train_dataset=ds,
        processing_class=tokenizer,
    )
    # TRL rendered each prompt with the policy's ChatML template, the system turn included.
    first = next(i for i, row in enumerate(ds) if len(row["prompt"]) > 1)
    rendered = tokenizer.decode(trainer.train_dataset[first]["prompt_ids"])
    assert rendered.startswith("<|im_start|>system\nAnswer with <digits> only.<|im_end|>")
    assert rendered.endswith("<|im_start|>assistant\n")
    trainer.train()
    assert trainer.state.global_step == 1
    assert math.isfinite(trainer.state.log_history[0]["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
