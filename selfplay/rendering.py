"""The one place a prompt becomes the policy's input: its text and token ids.

`model.chat_template` decides how: `auto` renders with the policy tokenizer's chat template
(with the generation prompt, i.e. the assistant turn's header) when it has one, else uses the
plain text; `none` always uses the plain text; a path to a `.jinja` file renders with that
template instead of the tokenizer's. A rendered text is encoded without the tokenizer's special
tokens, because the template writes them (a Llama-3 BOS once, never twice); a plain prompt is
encoded as the tokenizer encodes any text (its BOS included when it adds one). A conversation
cannot be given to a policy without a template: that is a ConfigError naming the field.

Generation in every backend, reference and π_t log-probs, training, evaluation, the guards,
the self-judge and revise all go through a `PromptRenderer`, so the tokens a response was
sampled after are the tokens it is scored and trained after.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from selfplay.config import ConfigError
from selfplay.tasks.base import Prompt

if TYPE_CHECKING:
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    from selfplay.config import ModelConfig

FIELD = "model.chat_template"


def template_source(tokenizer: PreTrainedTokenizerBase, setting: str) -> str | None:
    """The Jinja source the policy's prompts are rendered with under `setting` (auto, none or
    a file path), or None for plain text."""
    if setting == "none":
        return None
    if setting == "auto":
        return getattr(tokenizer, "chat_template", None) or None
    return Path(setting).expanduser().read_text()


def padding_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id to pad batches with: the tokenizer's pad token, else its EOS, else 0. Padding is
    always masked out, so a tokenizer without a pad token (Llama-3, Mistral) needs none added
    and its vocabulary is never resized."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return 0


class PromptRenderer:
    """Renders prompts for one policy tokenizer under a `model.chat_template` setting."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, chat_template: str = "auto", where: str = ""
    ) -> None:
        self.tokenizer = tokenizer
        self.setting = chat_template
        self.template = template_source(tokenizer, chat_template)
        self.where = where  # the checkpoint, for messages

    @classmethod
    def load(cls, checkpoint_dir: str, chat_template: str = "auto") -> PromptRenderer:
        """The renderer of a checkpoint directory's tokenizer."""
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(checkpoint_dir), chat_template, checkpoint_dir)

    @property
    def templated(self) -> bool:
        """Whether prompts are rendered as chat (so conversations can be given)."""
        return self.template is not None

    def text(self, prompt: Prompt) -> str:
        """The prompt as the policy reads it: rendered with the chat template and the
        generation prompt, or the plain text. A conversation without a template is a
        ConfigError naming model.chat_template."""
        if self.template is None:
            if prompt.messages is not None:
                raise ConfigError(_no_template(self.setting, self.where))
            return prompt.text
        return self.tokenizer.apply_chat_template(
            prompt.chat(), chat_template=self.template, add_generation_prompt=True, tokenize=False
        )

    def ids(self, prompt: Prompt) -> list[int]:
        """The prompt's token ids (see `text`); a prompt of no tokens is a ValueError."""
        return self.ids_batch([prompt])[0]

    def ids_batch(self, prompts: list[Prompt]) -> list[list[int]]:
        """`ids` of each prompt, encoded in one call (no padding)."""
        if not prompts:
            return []
        texts = [self.text(p) for p in prompts]
        # A rendered text carries the template's special tokens: adding the tokenizer's would
        # write a second BOS.
        encoded = self.tokenizer(texts, add_special_tokens=not self.templated)["input_ids"]
        for text, ids in zip(texts, encoded, strict=True):
            if not ids:
                raise ValueError(f"prompt {text!r} encodes to no tokens")
        return [list(ids) for ids in encoded]


def check_conversations(model: ModelConfig, prompts: Iterable[Prompt]) -> None:
    """Raise ConfigError naming model.chat_template when one of `prompts` is a conversation
    that the initial policy (model.path, or the tiny model when unset) would have to see
    without a template: what the loop checks before it writes anything. Loads the policy's
    tokenizer only when a conversation is there and the setting is auto."""
    conversation = next((p for p in prompts if p.messages is not None), None)
    if conversation is None or model.chat_template not in ("auto", "none"):
        return
    if model.chat_template == "none":
        raise ConfigError(_no_template("none", ""))
    from transformers import AutoTokenizer

    from selfplay.model_source import resolve_model
    from selfplay.tiny_model import build_tokenizer

    if model.path is None:
        PromptRenderer(build_tokenizer(), "auto", "the tiny model").text(conversation)
    else:
        path = str(resolve_model(model.path, model.revision, "model.path"))
        PromptRenderer(AutoTokenizer.from_pretrained(path), "auto", path).text(conversation)


def _no_template(setting: str, where: str) -> str:
    if setting == "none":
        return f"{FIELD}: none, but a prompt is a conversation: set it to auto or a .jinja file"
    whose = f" ({where})" if where else ""
    return (
        f"{FIELD}: a prompt is a conversation but the policy's tokenizer{whose} has no chat "
        "template: set model.chat_template to a .jinja template file"
    )
