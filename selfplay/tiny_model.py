"""The tiny character-level Llama that the embedded quickstart builds locally (no download)."""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
)

from selfplay.config import TinyModelConfig

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
# Printable ASCII (space to tilde) plus newline and tab: enough for prompts of any text task.
CHARACTERS = tuple(chr(c) for c in range(32, 127)) + ("\n", "\t")
MAX_POSITIONS = 1024


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A one-token-per-character tokenizer; pads on the left and adds no BOS or EOS itself."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # Every character is its own pre-token; Fuse joins them back without separators.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="left",
        model_max_length=MAX_POSITIONS,
    )


def _llama_config(
    cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerFast, **extra: int
) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        dtype="float32",
        **extra,
    )


def build_model(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """A freshly initialised float32 Llama with tied embeddings (init draws from torch's global RNG)."""
    model = LlamaForCausalLM(_llama_config(cfg, tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def build_reward_model(
    cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerFast
) -> LlamaForSequenceClassification:
    """A freshly initialised tiny Llama with a one-logit head: a reward model for the
    `reward_model` judge's tests and examples (save it with `save_pretrained`)."""
    return LlamaForSequenceClassification(_llama_config(cfg, tokenizer, num_labels=1))
