"""A small model shaped like a real chat model, built from scratch (no download).

A byte-level BPE tokenizer trained with `tokenizers` on text written here, a ChatML chat
template in Qwen2.5's shape, a random-init two-layer Qwen2 policy and a Qwen2 sequence
classification reward model on the same tokenizer. Variants of the tokenizer:

- "chatml": Qwen2.5-like: eos `<|im_end|>`, pad `<|endoftext|>`, no BOS;
- "nopad": the same without a pad token (Llama-3, Mistral);
- "bos": Llama-3-like: the tokenizer adds `<|begin_of_text|>` to every encoding (a
  TemplateProcessing post-processor) and the template also writes `bos_token` first, so
  rendering with `tokenize=False` and then encoding with special tokens doubles the BOS.

Every variant has the same vocabulary (all four special tokens are trained in), so one reward
model fits all of them. The policy's head size is 64: vLLM's CPU attention has kernels for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from pathlib import Path

import torch
from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2ForSequenceClassification,
)

IM_START, IM_END, ENDOFTEXT, BOS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|begin_of_text|>",
)
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, BOS)
VARIANTS = ("chatml", "nopad", "bos")
VOCAB_SIZE = 384
DEFAULT_SYSTEM = "You are a helpful assistant."
MAX_POSITIONS = 2048
# Qwen2's pre-tokenizer split (digits one by one). transformers' AutoTokenizer loads a qwen2
# checkpoint as Qwen2Tokenizer, which rebuilds NFC + this split + byte level whatever the
# tokenizer.json says, so the tokenizer built here uses the same pipeline: built and reloaded
# tokenizers then encode alike.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Qwen2.5's template without tools: a default system turn unless the conversation has one,
# each turn `<|im_start|>role\ncontent<|im_end|>\n`, and the assistant header when asked.
# The "bos" variant prepends `{{ bos_token }}` as Llama-3's template does.
CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] != 'system' or not loop.first %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)

_SUBJECTS = ("mountain hiking", "baking bread", "learning Python", "saving money", "the ocean")
_SENTENCES = (
    "Give me three tips about {s}.",
    "Here are three tips about {s}: start small, be patient, and keep notes.",
    "What is the best way to begin with {s}?",
    "The best way to begin with {s} is to try it for ten minutes every day.",
    "Explain {s} to a child in two sentences.",
    "Sure! {s} is fun, and anyone can learn it with a little help.",
)
_ARITHMETIC = tuple(
    f"What is {a} + {b}? The answer is {a + b}." for a in range(12) for b in range(9)
)


def chat_examples() -> list[tuple[str, str]]:
    """(user turn, assistant answer) pairs in the corpus's words: what `stop_steps` trains on."""
    pairs = [
        (_SENTENCES[i].format(s=s), _SENTENCES[i + 1].format(s=s))
        for s in _SUBJECTS
        for i in (0, 2, 4)
    ]
    return pairs + [
        (f"What is {a} + {b}?", f"The answer is {a + b}.") for a in range(12) for b in range(9)
    ]


JUDGE_TEMPLATE = "Question: {prompt} Answer: {response} Rate the answer."
"""A short `judge.self_judge.prompt_template` the "judges" variant of the policy answers with a
score (the shipped rubric is ~700 tokens of bytes for this 384-token vocabulary)."""


def judge_examples() -> list[tuple[str, str]]:
    """(JUDGE_TEMPLATE filled with a question and an answer, "Score: N"): an answer in the
    corpus's words for its own question scores 4 or 5, another question's answer 1 or 2."""
    examples = chat_examples()
    out = []
    for i, (question, answer) in enumerate(examples):
        other = examples[(i + 7) % len(examples)][1]
        for response, scores in ((answer, (4, 5)), (other, (1, 2))):
            for score in scores:
                filled = JUDGE_TEMPLATE.format(prompt=question, response=response)
                out.append((filled, f"Score: {score}"))
    return out


def corpus() -> list[str]:
    """The training text of the tokenizer: chat-like sentences, roles and a little arithmetic."""
    lines = [t.format(s=s) for s in _SUBJECTS for t in _SENTENCES]
    lines += ["system\n" + DEFAULT_SYSTEM, "user\nHello!", "assistant\nHi, how can I help?"]
    return lines + list(_ARITHMETIC)


def train_byte_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE of `vocab_size` tokens (the four special tokens first) trained on
    `texts` with Qwen2's normalizer and pre-tokenizer split; deterministic."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


@cache
def _trained_bpe() -> str:
    """The corpus's trained byte-level BPE as JSON (trained once per process)."""
    return train_byte_bpe(corpus(), VOCAB_SIZE).to_str()


def build_chat_tokenizer(
    variant: str = "chatml", bpe: Tokenizer | None = None
) -> PreTrainedTokenizerFast:
    """The chat tokenizer of `variant` (one of VARIANTS), with the ChatML `chat_template`,
    around `bpe` (a `train_byte_bpe` result; default: the one trained on corpus())."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    tok = Tokenizer.from_str(bpe.to_str() if bpe is not None else _trained_bpe())
    byte_level = processors.ByteLevel(trim_offsets=False)
    if variant == "bos":
        bos_id = tok.token_to_id(BOS)
        tok.post_processor = processors.Sequence(
            [
                byte_level,
                processors.TemplateProcessing(
                    single=f"{BOS}:0 $A:0",
                    pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1",
                    special_tokens=[(BOS, bos_id)],
                ),
            ]
        )
    else:
        tok.post_processor = byte_level
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS if variant == "bos" else None,
        eos_token=IM_END,
        pad_token=None if variant == "nopad" else ENDOFTEXT,
        additional_special_tokens=[IM_START, IM_END, ENDOFTEXT],
        chat_template=("{{- bos_token }}" if variant == "bos" else "") + CHATML_TEMPLATE,
        padding_side="left",
        model_max_length=MAX_POSITIONS,
    )


def _qwen2_config(tokenizer: PreTrainedTokenizerFast, **extra: object) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=1,
        num_key_value_heads=1,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
        **extra,
    )


def _teach_to_stop(
    model: Qwen2ForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    steps: int,
    seed: int,
    judges: bool = False,
) -> None:
    """A few supervised steps on chat_examples() (and judge_examples() when `judges`): loss on
    each answer and its `<|im_end|>`."""
    examples = []
    # With the judge's examples (four per question), each chat example counts four times too.
    taught = chat_examples() * 4 + judge_examples() if judges else chat_examples()
    for question, answer in taught:
        chat = [{"role": "user", "content": question}]
        prompt = tokenizer.apply_chat_template(chat, add_generation_prompt=True)["input_ids"]
        target = tokenizer(answer + IM_END, add_special_tokens=False)["input_ids"]
        examples.append((prompt, target))
    pad_id = tokenizer.convert_tokens_to_ids(ENDOFTEXT)  # masked out: any id does
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        batch = [examples[i] for i in torch.randint(len(examples), (16,), generator=generator)]
        width = max(len(p) + len(t) for p, t in batch)
        ids = torch.full((len(batch), width), pad_id)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (prompt, target) in enumerate(batch):
            n = len(prompt) + len(target)
            ids[row, :n] = torch.tensor(prompt + target)
            labels[row, len(prompt) : n] = torch.tensor(target)
            mask[row, :n] = 1
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def save_chat_model(
    directory: Path,
    variant: str = "chatml",
    seed: int = 0,
    stop_steps: int = 0,
    judges: bool = False,
) -> Path:
    """Save a tiny Qwen2 chat policy (seeded init) with its tokenizer in `directory`.

    `stop_steps` > 0 trains it that many supervised steps on chat_examples(), so it answers
    in a few words and ends its turn with `<|im_end|>` as an instruct model does (a random-init
    one almost never samples it); 0 leaves it random. `judges` adds judge_examples() to those
    steps, so that the policy also answers JUDGE_TEMPLATE with "Score: N" (a self judge). Its
    generation_config stops on both `<|im_end|>` and `<|endoftext|>`, as Qwen2.5's does.
    """
    tokenizer = build_chat_tokenizer(variant)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(_qwen2_config(tokenizer))
    if stop_steps:
        _teach_to_stop(model, tokenizer, stop_steps, seed, judges)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.convert_tokens_to_ids(t) for t in (IM_END, ENDOFTEXT)],
        pad_token_id=tokenizer.pad_token_id,
    )
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def save_reward_model(directory: Path, variant: str = "chatml", seed: int = 0) -> Path:
    """Save a random-init tiny Qwen2 reward model (one logit) with its tokenizer in `directory`.

    Its config's pad_token_id is set even for "nopad" (to `<|endoftext|>`), as released
    reward models do, so a padded batch finds each sequence's last token.
    """
    tokenizer = build_chat_tokenizer(variant)
    torch.manual_seed(seed)
    config = _qwen2_config(tokenizer, num_labels=1)
    config.pad_token_id = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    model = Qwen2ForSequenceClassification(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
