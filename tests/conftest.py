"""Shared fixtures: a migrated store on SQLite and on the machine's real PostgreSQL, a small
hand-built run in it (`seeded_url`) for the tests of what reads the store, and the tiny chat
models of tests/chat_models.py (built once per session)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from sqlalchemy import Engine, create_engine, select, text

from db.engine import make_engine, session_factory, transaction
from db.migrate import upgrade
from db.models import Checkpoint, Judgment, Metric, Pair, Prompt, Response, Round, Run

# vLLM on a CPU sizes its KV cache as gpu_memory_utilization × the memory of the first CPU's
# NUMA node minus the engine process's own RSS: the tests' 0.05 goes negative on a machine whose
# node 0 holds 9 GiB of 24. An explicit 1 GiB works on any machine (the engines and the servers
# the tests start inherit it).
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

PG_URL = os.environ.get("SELFPLAY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep the tests' model cache out of the user's ~/.cache unless a test sets its own."""
    os.environ.setdefault("SELFPLAY_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def pg_schema_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def exploding_judge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The judge.name of a plug-in (module `exploding_judge` on sys.path, also for the
    subprocesses started from tmp_path) whose factory raises RuntimeError('cannot reach my
    model')."""
    (tmp_path / "exploding_judge.py").write_text(
        "class Exploding:\n"
        "    def __init__(self, cfg, env):\n"
        "        raise RuntimeError('cannot reach my model')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "exploding_judge:Exploding"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """An empty store URL, once for SQLite and once for PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("pg_schema_url")


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """A migrated engine on each backend."""
    eng = make_engine(db_url)
    upgrade(eng)
    yield eng
    eng.dispose()


def seed_store(url: str) -> dict[str, int]:
    """Run `demo`: 2 done rounds × 3 prompts × 4 responses, two judges, 2 pairs per prompt.

    Scores are sample_index / 3; the judge `llm` disagrees with `verifier` on sample 1 only.
    Prompt 0 of each round holds HTML, to check that pages escape it.
    """
    engine = make_engine(url)
    upgrade(engine)
    ids: dict[str, int] = {}
    with transaction(session_factory(engine)) as s:
        run = Run(name="demo", config={})
        s.add(run)
        s.flush()
        ids["run"] = run.id
        ckpts = {}
        for t in (-1, 0, 1):
            ckpts[t] = Checkpoint(
                run_id=run.id,
                round_index=t,
                path=f"/ckpt/{t}",
                heldout_accuracy=0.25 + 0.25 * (t + 1),
                heldout_score=0.25 + 0.25 * (t + 1),
            )
            s.add(ckpts[t])
        s.flush()
        for t in (0, 1):
            rnd = Round(
                run_id=run.id,
                index=t,
                status="done",
                policy_checkpoint_id=ckpts[t - 1].id,
                output_checkpoint_id=ckpts[t].id,
                heldout_accuracy=ckpts[t].heldout_accuracy,
                wall_time_s=1.5,
            )
            s.add(rnd)
            s.flush()
            for i in range(3):
                text = "<script>alert(1)</script> 2+2=" if i == 0 else f"Q:{t}{i}+1="
                prompt = Prompt(round_id=rnd.id, index=i, text=text, answer="4")
                s.add(prompt)
                s.flush()
                resp = []
                for k in range(4):
                    r = Response(
                        round_id=rnd.id,
                        prompt_id=prompt.id,
                        sample_index=k,
                        checkpoint_id=ckpts[t - 1].id,
                        text=f"A{k}" + "x" * k,
                        token_ids=[1] * (k + 1),
                        num_tokens=k + 1,
                        logprob=-float(k),
                        finish_reason="stop",
                    )
                    s.add(r)
                    s.flush()
                    resp.append(r)
                    s.add(
                        Judgment(
                            response_id=r.id,
                            judge="verifier",
                            status="ok",
                            score=k / 3,
                            critique=f"critique {k}",
                        )
                    )
                    llm_score = k / 3 if k != 1 else 0.9
                    s.add(
                        Judgment(
                            response_id=r.id,
                            judge="llm",
                            status="ok",
                            score=llm_score,
                            trace={"tool": "calc", "calls": [k]},
                        )
                    )
                s.add(
                    Pair(
                        round_id=rnd.id,
                        prompt_id=prompt.id,
                        chosen_id=resp[3].id,
                        rejected_id=resp[0].id,
                        chosen_score=1.0,
                        rejected_score=0.0,
                        margin=1.0,
                        builder="max_min",
                    )
                )
                s.add(
                    Pair(
                        round_id=rnd.id,
                        prompt_id=prompt.id,
                        chosen_id=resp[2].id,
                        rejected_id=resp[1].id,
                        chosen_score=2 / 3,
                        rejected_score=1 / 3,
                        margin=1 / 3,
                        builder="max_min",
                    )
                )
            for step in (1, 2, 3):
                for name, value in (("loss", 1.0 / step), ("reward_margin", 0.1 * step)):
                    s.add(
                        Metric(
                            run_id=run.id,
                            round_index=t,
                            stage="train",
                            step=step,
                            name=name,
                            value=value,
                        )
                    )
            s.flush()
            ids[f"round{t}"] = rnd.id
    engine.dispose()
    return ids


@pytest.fixture
def seeded_url(db_url: str) -> str:
    """A store URL (SQLite, then PostgreSQL) holding the `demo` run of `seed_store`."""
    seed_store(db_url)
    return db_url


def chat_models() -> ModuleType:
    """tests.chat_models, imported on first use: torch and transformers load only in the sessions
    that build a chat model, not in every store test's."""
    import tests.chat_models

    return tests.chat_models


@pytest.fixture(scope="session")
def chat_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-init Qwen2 chat policy with a ChatML byte-level BPE tokenizer (pad set)."""
    return chat_models().save_chat_model(tmp_path_factory.mktemp("chat-model"), "chatml")


@pytest.fixture(scope="session")
def chat_model_nopad_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chat policy with a tokenizer that has no pad token (like Llama-3, Mistral)."""
    return chat_models().save_chat_model(tmp_path_factory.mktemp("chat-model-nopad"), "nopad")


@pytest.fixture(scope="session")
def chat_model_bos_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chat policy whose tokenizer adds BOS and whose template writes it too (Llama-3)."""
    return chat_models().save_chat_model(tmp_path_factory.mktemp("chat-model-bos"), "bos")


@pytest.fixture(scope="session")
def reward_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2 sequence-classification reward model on the chat tokenizer."""
    return chat_models().save_reward_model(tmp_path_factory.mktemp("chat-reward-model"), "chatml")


@pytest.fixture(scope="session")
def instruct_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chat policy after 100 supervised steps: it answers in a few words and ends its turn
    with `<|im_end|>` (a random-init one runs to max_new_tokens)."""
    path = tmp_path_factory.mktemp("chat-instruct-model")
    return chat_models().save_chat_model(path, "chatml", stop_steps=100)


@pytest.fixture(scope="session")
def self_judging_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chat policy after 600 supervised steps on the chat examples and the judge's: it
    answers as `instruct_model_dir` does, and answers tests.chat_models.JUDGE_TEMPLATE with
    "Score: N" (the self judge's format)."""
    path = tmp_path_factory.mktemp("chat-self-judging-model")
    return chat_models().save_chat_model(path, "chatml", stop_steps=600, judges=True)


CONVERSATION_TURNS = (
    ("system", "Answer with <digits> only."),
    ("user", "Are you ready? [bold]yes[/bold]"),
    ("assistant", "Ready."),
)
"""The turns `conversation_url` puts before prompt 1's text (its last user turn): HTML and Rich
markup in them check that the views escape a conversation."""


@pytest.fixture
def conversation_url(seeded_url: str) -> str:
    """The `demo` store with prompt 1 of each round a conversation: CONVERSATION_TURNS, then
    its text as the last user turn."""
    engine = make_engine(seeded_url)
    with transaction(session_factory(engine)) as s:
        for prompt in s.scalars(select(Prompt).where(Prompt.index == 1)):
            turns = [*CONVERSATION_TURNS, ("user", prompt.text)]
            prompt.messages = [{"role": role, "content": content} for role, content in turns]
    engine.dispose()
    return seeded_url


WIN_RATES = {
    0: {"win_rate": 0.6, "win_rate_se": 0.05, "win_rate_lc": 0.55, "win_rate_n": 40.0,
        "win_rate_failed": 1.0, "win_rate_tie_share": 0.125,
        "win_rate_length_coefficient": 0.3, "eval_mean_chars": 812.0,
        "baseline_mean_chars": 640.5},
    1: {"win_rate": 0.7, "win_rate_se": 0.04, "win_rate_lc": 0.62, "win_rate_n": 40.0,
        "win_rate_failed": 0.0, "win_rate_tie_share": 0.1,
        "win_rate_length_coefficient": 0.25, "eval_mean_chars": 900.0,
        "baseline_mean_chars": 640.5},
}  # fmt: skip
"""The `eval` metrics `open_ended_url` gives the `demo` run's checkpoints (rounds 0, 1)."""
JUDGE_SCORES = {
    0: {"judge_score": 0.61, "judge_score_se": 0.03, "judge_score_n": 40.0,
        "judge_score_failed": 2.0},
    1: {"judge_score": 0.72, "judge_score_se": 0.02, "judge_score_n": 40.0,
        "judge_score_failed": 0.0},
}  # fmt: skip
"""The same for `evaluation.metric: judge_score` (the initial policy's at round -1 is 0.5)."""


def make_open_ended(url: str, metric: str) -> None:
    """Turn the seeded `demo` run into one evaluated on held-out prompts without answers by
    `metric` (win_rate: WIN_RATES, the initial policy its own baseline, 0.5 and no rows;
    judge_score: JUDGE_SCORES and 0.5 at round -1): no held-out accuracy anywhere, the
    metric's value as each checkpoint's heldout_score, its figures as `eval` metrics."""
    figures = dict(WIN_RATES if metric == "win_rate" else JUDGE_SCORES)
    if metric == "judge_score":
        figures[-1] = {"judge_score": 0.5, "judge_score_se": 0.03, "judge_score_n": 40.0}
    engine = make_engine(url)
    with transaction(session_factory(engine)) as s:
        for rnd in s.scalars(select(Round)):
            rnd.heldout_accuracy = None
        for ckpt in s.scalars(select(Checkpoint)):
            ckpt.heldout_accuracy = None
            ckpt.heldout_score = figures.get(ckpt.round_index, {}).get(metric, 0.5)
            for name, value in figures.get(ckpt.round_index, {}).items():
                s.add(
                    Metric(
                        run_id=ckpt.run_id,
                        round_index=ckpt.round_index,
                        stage="eval",
                        step=0,
                        name=name,
                        value=value,
                    )
                )
    engine.dispose()


@pytest.fixture
def win_rate_url(seeded_url: str) -> str:
    """The `demo` store evaluated by win rate (`make_open_ended`)."""
    make_open_ended(seeded_url, "win_rate")
    return seeded_url


@pytest.fixture
def judge_score_url(seeded_url: str) -> str:
    """The `demo` store evaluated by judge score (`make_open_ended`)."""
    make_open_ended(seeded_url, "judge_score")
    return seeded_url
