import string

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from selfplay.config import TinyModelConfig
from selfplay.tiny_model import build_model, build_tokenizer

TINY = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


def test_tokenizer_is_one_token_per_character_and_roundtrips():
    tok = build_tokenizer()
    text = "".join(chr(c) for c in range(32, 127)) + "\n\t"
    ids = tok(text)["input_ids"]
    assert len(ids) == len(text)  # no BOS/EOS added, no merges
    assert tok.decode(ids) == text
    assert len(tok) == 4 + 95 + 2
    assert tok.unk_token_id not in ids


def test_tokenizer_special_tokens_and_unknown_characters():
    tok = build_tokenizer()
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<pad>", "<bos>", "<eos>")
    assert len({tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id}) == 4
    ids = tok("A:9é")["input_ids"]
    assert ids[-1] == tok.unk_token_id
    assert tok.decode(tok("A:90")["input_ids"] + [tok.eos_token_id], skip_special_tokens=True) == (
        "A:90"
    )


def test_tokenizer_pads_on_the_left():
    tok = build_tokenizer()
    enc = tok(["Q:1+2=", "Q:66+24="], padding=True)
    assert enc["input_ids"][0][:2] == [tok.pad_token_id] * 2
    assert enc["attention_mask"][0] == [0, 0, 1, 1, 1, 1, 1, 1]
    assert tok.decode(enc["input_ids"][0][2:]) == "Q:1+2="


def test_default_model_is_about_a_million_tied_float32_parameters():
    tok = build_tokenizer()
    model = build_model(TinyModelConfig(), tok)
    assert 0.8e6 < model.num_parameters() < 1.2e6
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.dtype == torch.float32
    assert model.config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id


def test_save_and_reload_with_auto_classes(tmp_path):
    tok = build_tokenizer()
    torch.manual_seed(0)
    model = build_model(TINY, tok).eval()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()

    model2 = AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True).eval()
    tok2 = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    text = "Q:66+24=" + string.ascii_letters
    assert tok2(text)["input_ids"] == tok(text)["input_ids"]
    assert tok2.padding_side == "left"
    assert tok2.eos_token_id == tok.eos_token_id
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, model2(ids).logits)
