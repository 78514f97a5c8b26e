import pytest
import torch

from selfplay.config import TrainingConfig
from selfplay.training.logprobs import score_responses
from selfplay.training.trainer import PairExample, loss_params, train_on_pairs

PAD = 0
# Synthetic preference: after any prompt, answer "5 6 EOS" rather than "7 EOS" / "8 9 10 EOS".
PROMPTS = [[1, 3, 4], [1, 11, 12, 13], [1, 14], [1, 15, 16], [1, 17, 18, 19, 3], [1, 4, 4]]
CHOSEN = [5, 6, 2]
REJECTED = [[7, 2], [8, 9, 10, 2]]


def make_pairs(model) -> list[PairExample]:
    rejected = [REJECTED[i % 2] for i in range(len(PROMPTS))]
    ref_c = score_responses(model, PROMPTS, [CHOSEN] * len(PROMPTS), PAD, max_tokens_per_batch=64)
    ref_r = score_responses(model, PROMPTS, rejected, PAD, max_tokens_per_batch=64)
    return [
        PairExample(p, CHOSEN, r, c, rr)
        for p, r, c, rr in zip(PROMPTS, rejected, ref_c, ref_r, strict=True)
    ]


def log_ratio_margins(model, pairs: list[PairExample]) -> torch.Tensor:
    """h = ℓ(y_w) − ℓ(y_l) of each pair under the model."""
    prompts = [p.prompt_ids for p in pairs]
    c = score_responses(
        model, prompts, [p.chosen_ids for p in pairs], PAD, max_tokens_per_batch=128
    )
    r = score_responses(
        model, prompts, [p.rejected_ids for p in pairs], PAD, max_tokens_per_batch=128
    )
    return torch.tensor(
        [
            (c_ - p.ref_chosen_logp) - (r_ - p.ref_rejected_logp)
            for p, c_, r_ in zip(pairs, c, r, strict=True)
        ]
    )


def config(**overrides) -> TrainingConfig:
    return TrainingConfig(
        **{"lr": 1e-2, "batch_size": 4, "max_steps": 30, "epochs": 20, **overrides}
    )


def test_dpo_widens_the_margin_until_every_pair_is_ranked_right(tiny_llama):
    model = tiny_llama()
    pairs = make_pairs(model)
    torch.testing.assert_close(log_ratio_margins(model, pairs), torch.zeros(len(pairs)))
    history = []
    summary = train_on_pairs(
        model, pairs, config(), PAD, seed=0, on_step=lambda s, m: history.append(m)
    )
    margins = log_ratio_margins(model, pairs)
    assert (margins > 0).all()
    assert history[-1]["preference_accuracy"] == 1.0
    assert history[-1]["reward_margin"] > history[0]["reward_margin"]
    assert history[-1]["loss"] < history[0]["loss"]
    assert set(history[0]) == {
        "loss",
        "reward_margin",
        "preference_accuracy",
        "chosen_logp",
        "rejected_logp",
        "grad_norm",
        "lr",
    }
    assert history[0]["lr"] == 1e-2
    assert summary["steps"] == 30
    assert summary["loss"] == pytest.approx(sum(m["loss"] for m in history) / 30)
    assert not model.training


def test_dpop_lambda_reaches_the_loss():
    assert loss_params(TrainingConfig(loss="dpop", dpop_lambda=7.0)).dpop_lambda == 7.0
    assert loss_params(TrainingConfig(loss="dpop")).dpop_lambda == 50.0  # the paper's λ
    with pytest.raises(ValueError, match="dpop_lambda"):
        TrainingConfig(loss="dpop", dpop_lambda=-1.0)


def test_same_seed_same_parameters(tiny_llama):
    def run(seed: int) -> list[torch.Tensor]:
        model = tiny_llama(seed=0)
        train_on_pairs(model, make_pairs(model), config(max_steps=5), PAD, seed=seed)
        return [p.detach().clone() for p in model.parameters()]

    a, b, c = run(seed=1), run(seed=1), run(seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))  # the shuffle matters


def test_max_steps_caps_epochs(tiny_llama):
    model = tiny_llama()
    pairs = make_pairs(model)  # 6 pairs, batch 4: 2 steps per epoch
    steps = []
    summary = train_on_pairs(
        model,
        pairs,
        config(max_steps=3, epochs=5),
        PAD,
        seed=0,
        on_step=lambda s, m: steps.append(s),
    )
    assert steps == [1, 2, 3]
    assert summary["steps"] == 3
    steps.clear()
    train_on_pairs(
        model,
        pairs,
        config(max_steps=50, epochs=2),
        PAD,
        seed=0,
        on_step=lambda s, m: steps.append(s),
    )
    assert steps == [1, 2, 3, 4]


def test_rft_raises_chosen_logp(tiny_llama):
    model = tiny_llama()
    pairs = make_pairs(model)
    before = torch.tensor([p.ref_chosen_logp for p in pairs])
    history = []
    train_on_pairs(
        model,
        pairs,
        config(loss="rft", max_steps=10),
        PAD,
        seed=0,
        on_step=lambda s, m: history.append(m),
    )
    after = torch.tensor(score_responses(model, PROMPTS, [CHOSEN] * len(PROMPTS), PAD, 8))
    assert (after > before).all()
    assert history[-1]["chosen_logp"] > history[0]["chosen_logp"]


def test_nll_weight_adds_to_the_loss(tiny_llama):
    model = tiny_llama()
    pairs = make_pairs(model)
    plain, weighted = [], []
    train_on_pairs(
        model, pairs, config(max_steps=1), PAD, seed=0, on_step=lambda s, m: plain.append(m)
    )
    model = tiny_llama()
    train_on_pairs(
        model,
        pairs,
        config(max_steps=1, nll_weight=0.5),
        PAD,
        seed=0,
        on_step=lambda s, m: weighted.append(m),
    )
    # At step 1 the policy is the reference: DPO loss = log 2, and α·NLL = 0.5·(-mean S(y_w)/3).
    assert plain[0]["loss"] == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-6)
    nll = -plain[0]["chosen_logp"] / len(CHOSEN)
    assert weighted[0]["loss"] == pytest.approx(plain[0]["loss"] + 0.5 * nll, abs=1e-5)


def test_no_pairs_leaves_the_model_alone(tiny_llama):
    model = tiny_llama().train()
    before = [p.detach().clone() for p in model.parameters()]
    assert train_on_pairs(model, [], config(), PAD, seed=0) == {}
    assert model.training
    assert all(torch.equal(x, p) for x, p in zip(before, model.parameters(), strict=True))


def test_warmup_ramps_the_learning_rate_linearly(tiny_llama):
    model = tiny_llama()
    lrs = []
    train_on_pairs(
        model,
        make_pairs(model),
        config(lr=1e-2, warmup_steps=4, max_steps=6),
        PAD,
        seed=0,
        on_step=lambda s, m: lrs.append(m["lr"]),
    )
    # step i (from 1) uses lr · min(1, i / (warmup + 1))
    assert lrs == pytest.approx([2e-3, 4e-3, 6e-3, 8e-3, 1e-2, 1e-2])


def test_grad_accumulation_matches_one_big_batch(tiny_llama):
    # One epoch of 6 pairs: a single step of batch 6 vs accumulating 2 micro-batches of 3.
    # The micro-batches split the same seeded permutation, so the gradients (means of means of
    # equal-size halves) are equal and so are the updated weights, up to float rounding.
    big, small = tiny_llama(), tiny_llama()
    pairs = make_pairs(big)
    train_on_pairs(big, pairs, config(batch_size=6, max_steps=1, epochs=1), PAD, seed=3)
    train_on_pairs(
        small, pairs, config(batch_size=3, grad_accum_steps=2, max_steps=1, epochs=1), PAD, seed=3
    )
    for a, b in zip(big.parameters(), small.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_shared_prompt_trains_like_two_sequences_per_pair(tiny_llama):
    # Prefix sharing changes the layout, not the maths: same losses, same updates.
    shared, separate = tiny_llama(), tiny_llama()
    pairs = make_pairs(shared)
    runs = []
    for model, flag in ((shared, True), (separate, False)):
        history: list[dict] = []
        cfg = config(batch_size=3, max_steps=4, epochs=2, shared_prompt=flag)
        train_on_pairs(model, pairs, cfg, PAD, seed=1, on_step=history_of(history))
        runs.append(history)
    for a, b in zip(*runs, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    for a, b in zip(shared.parameters(), separate.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_cosine_schedule_decays_to_zero(tiny_llama):
    model = tiny_llama()
    lrs = []
    cfg = config(schedule="cosine", warmup_steps=2, max_steps=10, epochs=50)
    train_on_pairs(model, make_pairs(model), cfg, PAD, 0, on_step=lambda s, m: lrs.append(m["lr"]))
    assert len(lrs) == 10
    assert lrs[0] < lrs[1] < lrs[2] == pytest.approx(1e-2)  # warmup 1/3, 2/3, then peak
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:], strict=False))  # monotone decay
    assert lrs[-1] < 0.1 * 1e-2


def history_of(history: list[dict]):  # noqa: ANN201
    return lambda step, metrics: history.append(metrics)


def test_rmsprop_and_every_zoo_loss_train(tiny_llama):
    for loss, extra in [
        ("ipo", {}),
        ("cdpo", {}),
        ("simpo", {}),
        ("chipo", {"chipo_r": 10.0}),
        ("dpop", {"dpop_lambda": 5.0}),
        ("sppo", {"sppo_eta": 4.0, "optimizer": "rmsprop", "lr": 1e-3}),
        ("inpo", {"inpo_eta": 0.5, "reference": "sft"}),
        ("xpo", {"reference": "sft"}),
    ]:
        model = tiny_llama()
        pairs = [
            PairExample(
                **{
                    **p.__dict__,
                    "prev_chosen_logp": p.ref_chosen_logp,
                    "prev_rejected_logp": p.ref_rejected_logp,
                    "chosen_target": 0.9,
                    "rejected_target": 0.1,
                    "chosen_is_ref_sample": False,
                }
            )
            for p in make_pairs(model)
        ]
        history: list[dict] = []
        train_on_pairs(
            model,
            pairs,
            config(loss=loss, max_steps=15, **extra),
            PAD,
            0,
            on_step=history_of(history),
        )
        assert history[-1]["loss"] < history[0]["loss"], loss
        assert all(torch.isfinite(torch.tensor(m["loss"])) for m in history), loss


def test_lora_trains_only_adapters_and_merges(tiny_llama, tmp_path):
    from selfplay.config import LoraConfig
    from selfplay.training.trainer import load_trainable, merged_for_saving

    base = tiny_llama()
    base.save_pretrained(tmp_path / "base")
    cfg = config(lora=LoraConfig(r=4, alpha=8.0, target_modules=["q_proj", "v_proj"]))
    model = load_trainable(str(tmp_path / "base"), cfg, "cpu")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    pairs = make_pairs(base)
    before = log_ratio_margins(base, pairs)
    train_on_pairs(model, pairs, cfg, PAD, seed=0)
    merged = merged_for_saving(model)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert (log_ratio_margins(merged, pairs) > before).all()


def test_compile_option_compiles_each_layer_in_place(tiny_llama, tmp_path):
    from selfplay.training.trainer import load_trainable

    base = tiny_llama()
    base.save_pretrained(tmp_path / "base")
    model = load_trainable(str(tmp_path / "base"), config(compile=True), "cpu")
    assert all(layer._compiled_call_impl is not None for layer in model.get_decoder().layers)
    assert model.state_dict().keys() == base.state_dict().keys()  # checkpoints unchanged


def test_bf16_weights_train_float32_masters(tiny_llama, tmp_path, monkeypatch):
    # The GPU path (training.bf16_weights) forced on the CPU, where bf16 matmuls also run.
    from selfplay.config import LoraConfig
    from selfplay.training import trainer

    cfg = config(batch_size=3, grad_accum_steps=2, max_steps=6)
    fp32, bf16 = tiny_llama(), tiny_llama()
    pairs = make_pairs(fp32)
    reference: list[dict] = []
    train_on_pairs(fp32, pairs, cfg, PAD, seed=0, on_step=history_of(reference))

    monkeypatch.setattr(trainer, "_precision", lambda cfg, device: "bf16_weights")
    history: list[dict] = []
    dtypes: list[set] = []

    def on_step(step: int, metrics: dict) -> None:
        history.append(metrics)
        dtypes.append({p.dtype for p in bf16.parameters()} | {b.dtype for b in bf16.buffers()})

    train_on_pairs(bf16, pairs, cfg, PAD, seed=0, on_step=on_step)
    # During training: bf16 weights, the rotary frequencies (a buffer) still float32.
    assert len(dtypes) == 6 and all(d == {torch.bfloat16, torch.float32} for d in dtypes)
    assert {p.dtype for p in bf16.parameters()} == {torch.float32}  # float32 again after
    for a, b in zip(reference, history, strict=True):  # the same training, to bf16 precision
        assert b["loss"] == pytest.approx(a["loss"], rel=0.05, abs=0.02)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=0.05)  # both micro-batches
    assert (log_ratio_margins(bf16, pairs) > 0).all()

    # Frozen weights (LoRA) come back bit for bit: their float32 values were kept, not re-cast.
    tiny_llama().save_pretrained(tmp_path / "base")
    lora_cfg = config(lora=LoraConfig(r=4, target_modules=["q_proj"]), max_steps=3)
    lora = trainer.load_trainable(str(tmp_path / "base"), lora_cfg, "cpu")
    frozen = {n: p.detach().clone() for n, p in lora.named_parameters() if not p.requires_grad}
    adapters = {n: p.detach().clone() for n, p in lora.named_parameters() if p.requires_grad}
    train_on_pairs(lora, pairs, lora_cfg, PAD, seed=0)
    for n, p in lora.named_parameters():
        assert p.dtype == torch.float32, n
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    assert any(not torch.equal(p, adapters[n]) for n, p in lora.named_parameters() if n in adapters)
