"""The tiny chat models other tests run on look like a real chat model from the outside."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GenerationConfig,
)

from tests.chat_models import BOS, DEFAULT_SYSTEM, ENDOFTEXT, IM_END, build_chat_tokenizer, corpus

HIKING = [{"role": "user", "content": "Give me three tips about mountain hiking."}]


def test_the_template_renders_chatml_with_a_default_system_turn():
    tok = build_chat_tokenizer("chatml")
    text = tok.apply_chat_template(HIKING, tokenize=False, add_generation_prompt=True)
    assert text == (
        f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n"
        "<|im_start|>user\nGive me three tips about mountain hiking.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    turns = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Tips?"},
    ]
    text = tok.apply_chat_template(turns, tokenize=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nTips?<|im_end|>\n"
    )
    # The markers are single special tokens; the text between them is byte-level BPE.
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 4
    assert ids.count(tok.convert_tokens_to_ids(IM_END)) == 4
    assert tok.decode(ids) == text
    assert tok.bos_token is None and tok(text)["input_ids"] == ids


def test_eos_and_pad_of_each_variant():
    chatml, nopad, bos = (build_chat_tokenizer(v) for v in ("chatml", "nopad", "bos"))
    assert chatml.eos_token == nopad.eos_token == bos.eos_token == IM_END
    assert chatml.pad_token == bos.pad_token == ENDOFTEXT
    assert nopad.pad_token is None and nopad.pad_token_id is None
    # One vocabulary for all variants: a reward model fits any of them.
    assert chatml.get_vocab() == nopad.get_vocab() == bos.get_vocab()
    assert 256 < len(chatml) <= 512


def test_the_bos_variant_adds_bos_and_its_template_writes_it_again():
    tok = build_chat_tokenizer("bos")
    bos_id = tok.convert_tokens_to_ids(BOS)
    assert tok.bos_token == BOS
    assert tok("hello")["input_ids"][0] == bos_id
    assert tok("hello", add_special_tokens=False)["input_ids"][0] != bos_id
    text = tok.apply_chat_template(HIKING, tokenize=False, add_generation_prompt=True)
    assert text.startswith(BOS + "<|im_start|>system\n")
    # The double-BOS trap: the rendered text encoded with special tokens starts with two.
    assert tok(text)["input_ids"][:2] == [bos_id, bos_id]
    rendered = tok.apply_chat_template(HIKING, tokenize=True, add_generation_prompt=True)
    assert rendered["input_ids"].count(bos_id) == 1
    assert rendered["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]


def test_save_and_load_round_trip(tmp_path: Path, chat_model_dir: Path, chat_model_bos_dir: Path):
    for variant, path in (("chatml", chat_model_dir), ("bos", chat_model_bos_dir)):
        built, loaded = build_chat_tokenizer(variant), AutoTokenizer.from_pretrained(path)
        # Qwen2Tokenizer rebuilds its pre-tokenizer on load: the built one must already match.
        for text in corpus() + ["Héllo wörld 🙂\tand\nnew lines 12345"]:
            assert loaded(text)["input_ids"] == built(text)["input_ids"]
        assert loaded.chat_template == built.chat_template
        assert (loaded.pad_token, loaded.eos_token, loaded.bos_token) == (
            built.pad_token,
            built.eos_token,
            built.bos_token,
        )
    model = AutoModelForCausalLM.from_pretrained(chat_model_dir)
    assert model.config.model_type == "qwen2" and model.dtype == torch.float32
    ids = torch.tensor([AutoTokenizer.from_pretrained(chat_model_dir)("Hi there")["input_ids"]])
    with torch.no_grad():
        assert model(ids).logits.shape == (1, ids.shape[1], model.config.vocab_size)


def test_generation_config_stops_on_im_end_and_endoftext(chat_model_dir: Path):
    tok = AutoTokenizer.from_pretrained(chat_model_dir)
    gen = GenerationConfig.from_pretrained(chat_model_dir)
    assert gen.eos_token_id == [
        tok.convert_tokens_to_ids(IM_END),
        tok.convert_tokens_to_ids(ENDOFTEXT),
    ]
    assert gen.pad_token_id == tok.pad_token_id


def test_the_nopad_tokenizer_round_trips_without_pad(chat_model_nopad_dir: Path):
    assert AutoTokenizer.from_pretrained(chat_model_nopad_dir).pad_token is None


def test_reward_model_has_one_logit_and_a_pad_id(reward_model_dir: Path):
    rm = AutoModelForSequenceClassification.from_pretrained(reward_model_dir)
    tok = AutoTokenizer.from_pretrained(reward_model_dir)
    assert rm.config.num_labels == 1 and rm.config.pad_token_id == tok.pad_token_id
    batch = tok(["short", "a longer answer"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert rm(**batch).logits.shape == (2, 1)


def test_the_instruct_model_answers_and_ends_its_turn(instruct_model_dir: Path):
    tok = AutoTokenizer.from_pretrained(instruct_model_dir)
    model = AutoModelForCausalLM.from_pretrained(instruct_model_dir)
    stop = GenerationConfig.from_pretrained(instruct_model_dir).eos_token_id
    for question in ("What is 3 + 4?", "Give me three tips about the ocean.", "How are you?"):
        chat = [{"role": "user", "content": question}]
        ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=40, do_sample=False)
        answer = out[0, ids["input_ids"].shape[1] :].tolist()
        assert answer[-1] == tok.convert_tokens_to_ids(IM_END) and answer[-1] in stop
        assert len(answer) < 40 and IM_END not in tok.decode(answer[:-1])
