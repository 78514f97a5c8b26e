"""The prompt renderer on real tokenizers: the tiny model's (no template) and the chat fixture's
byte-level BPE with a ChatML template (tests/chat_models.py), with its no-pad and BOS variants."""

import pytest

from selfplay.config import ConfigError, ModelConfig, parse_config
from selfplay.rendering import PromptRenderer, check_conversations, padding_id
from selfplay.tasks.base import Prompt
from selfplay.tiny_model import build_tokenizer
from tests.chat_models import BOS, DEFAULT_SYSTEM, build_chat_tokenizer

CONVERSATION = Prompt.conversation(
    [
        ("system", "Be brief."),
        ("user", "What is 2 + 3?"),
        ("assistant", "The answer is 5."),
        ("user", "Give me three tips about baking bread."),
    ]
)
JINJA = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant] "


def test_a_plain_prompt_without_a_template_encodes_as_the_tokenizer_does():
    tok = build_tokenizer()  # the tiny model's: no chat template
    prompts = [Prompt("Q:1+2="), Prompt("Q:66+24=", answer="90")]
    for setting in ("auto", "none"):
        renderer = PromptRenderer(tok, setting)
        assert not renderer.templated
        assert renderer.text(prompts[0]) == "Q:1+2="
        assert renderer.ids_batch(prompts) == tok([p.text for p in prompts])["input_ids"]
        assert renderer.ids(prompts[1]) == tok("Q:66+24=")["input_ids"]


def test_a_conversation_renders_with_the_chat_template_and_the_generation_prompt():
    tok = build_chat_tokenizer("chatml")
    renderer = PromptRenderer(tok)
    assert renderer.templated
    assert renderer.text(CONVERSATION) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
        "<|im_start|>assistant\nThe answer is 5.<|im_end|>\n"
        "<|im_start|>user\nGive me three tips about baking bread.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    want = tok.apply_chat_template(CONVERSATION.chat(), add_generation_prompt=True)["input_ids"]
    assert renderer.ids(CONVERSATION) == list(want)
    # A plain prompt is one user turn, under the template's default system turn.
    assert renderer.text(Prompt("Hello!")) == (
        f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_a_bos_adding_tokenizer_gets_the_templates_bos_once():
    tok = build_chat_tokenizer("bos")
    bos = tok.convert_tokens_to_ids(BOS)
    ids = PromptRenderer(tok).ids_batch([CONVERSATION, Prompt("Hello!")])
    for row in ids:
        assert row[0] == bos and row.count(bos) == 1
    # Encoding the rendered text with special tokens, as a naive caller would, doubles it.
    naive = tok(PromptRenderer(tok).text(CONVERSATION))["input_ids"]
    assert naive[:2] == [bos, bos]
    # Without a template the tokenizer's own BOS is the one.
    plain = PromptRenderer(tok, "none").ids(Prompt("Hello!"))
    assert plain[0] == bos and plain.count(bos) == 1


def test_a_template_file_replaces_the_tokenizers(tmp_path):
    path = tmp_path / "plain.jinja"
    path.write_text(JINJA)
    for tok in (build_tokenizer(), build_chat_tokenizer("chatml")):
        renderer = PromptRenderer(tok, str(path))
        assert renderer.text(Prompt.conversation([("user", "hi")])) == "[user] hi\n[assistant] "
    assert ModelConfig(chat_template=str(path)).chat_template == str(path)


def test_a_missing_template_file_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.chat_template: .*nope\.jinja: no such file"):
        parse_config({"model": {"chat_template": str(tmp_path / "nope.jinja")}})


def test_a_conversation_without_a_template_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model\.chat_template: .*has no chat template"):
        PromptRenderer(build_tokenizer()).ids(CONVERSATION)
    with pytest.raises(ConfigError, match=r"model\.chat_template: none"):
        PromptRenderer(build_chat_tokenizer("chatml"), "none").text(CONVERSATION)


def test_the_loop_refuses_conversations_the_initial_policy_cannot_render(tmp_path, chat_model_dir):
    plain = [Prompt("Q:1+2=")]
    check_conversations(ModelConfig(), plain)  # the tiny model, plain prompts: fine
    with pytest.raises(ConfigError, match=r"model\.chat_template: .*the tiny model"):
        check_conversations(ModelConfig(), [*plain, CONVERSATION])
    with pytest.raises(ConfigError, match=r"model\.chat_template: none"):
        check_conversations(
            ModelConfig(path=str(chat_model_dir), chat_template="none"), [CONVERSATION]
        )
    check_conversations(ModelConfig(path=str(chat_model_dir)), [CONVERSATION])
    path = tmp_path / "t.jinja"
    path.write_text(JINJA)
    check_conversations(ModelConfig(chat_template=str(path)), [CONVERSATION])


def test_padding_id_falls_back_to_eos_without_a_pad_token():
    assert padding_id(build_chat_tokenizer("chatml")) == build_chat_tokenizer().pad_token_id
    nopad = build_chat_tokenizer("nopad")
    assert nopad.pad_token_id is None
    assert padding_id(nopad) == nopad.eos_token_id
    assert len(nopad) == len(build_chat_tokenizer("chatml"))  # nothing added


def test_the_loop_stops_before_writing_anything_when_the_tiny_model_gets_conversations(tmp_path):
    from selfplay.driver import run_loop

    data = tmp_path / "chat.jsonl"
    data.write_text('{"prompt": [{"role": "user", "content": "Hello!"}]}\n' * 3)
    store = tmp_path / "selfplay.db"
    cfg = parse_config(
        {
            "task": {"name": "jsonl", "path": str(data)},
            "run": {"output_dir": str(tmp_path / "out")},
            "store": {"url": f"sqlite:///{store}"},
        }
    )
    with pytest.raises(ConfigError, match=r"model\.chat_template: .*the tiny model"):
        run_loop(cfg)
    assert not store.exists()
