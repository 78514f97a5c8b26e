"""The judge stage: one judgment per response (each configured repeat), chunk by chunk; and,
once the round is judged, the judge's meta-evaluation stored as metrics."""

from __future__ import annotations

from sqlalchemy import select

from db import queries
from db.engine import transaction
from db.models import Judgment, Metric, Prompt, Response
from selfplay.faults import commit_point
from selfplay.judges.base import JudgeItem, Policy, Verdict, safe_judge
from selfplay.judges.meta_eval import Checked, judge_eval_metrics
from selfplay.stages.context import Context, get_round, metric_rows
from selfplay.tasks.base import Prompt as TaskPrompt


def _siblings(ctx: Context, pairs: list[tuple[Response, Prompt]]) -> dict[int, list[str]]:
    """For judges that score against the other responses to the same prompt: response id →
    the texts of its siblings (the prompt's other policy samples)."""
    prompt_ids = {p.id for _, p in pairs}
    k = ctx.cfg.generation.samples_per_prompt
    with ctx.sessions() as s:
        rows = s.execute(
            select(Response.id, Response.prompt_id, Response.text).where(
                Response.prompt_id.in_(prompt_ids), Response.sample_index < k
            )
        ).all()
    by_prompt: dict[int, list[tuple[int, str]]] = {}
    for rid, pid, text in rows:
        by_prompt.setdefault(pid, []).append((rid, text))
    return {r.id: [text for rid, text in by_prompt.get(p.id, []) if rid != r.id] for r, p in pairs}


_VERDICT_COLUMNS = ("status", "score", "critique", "trace", "error", "latency_s", "tokens", "cost")


def _verdict_columns(verdict: Verdict) -> dict:
    """The `judgments` columns a verdict fills."""
    return {column: getattr(verdict, column) for column in _VERDICT_COLUMNS}


def round_policy(ctx: Context, round_id: int) -> Policy | None:
    """The round's policy for a judge that asks the policy itself (None for other judges)."""
    if not ctx.engines.judge.needs_policy:
        return None
    with ctx.sessions() as s:
        path = get_round(s, round_id).policy_checkpoint.path
    return ctx.engines.policy(path)


def judge_responses(
    ctx: Context,
    pairs: list[tuple[Response, Prompt]],
    repeat: int = 0,
    policy: Policy | None = None,
) -> None:
    """Judge these responses and store one judgment each (failures stored as failed).

    A judge that raises, or returns the wrong number of verdicts, fails the whole chunk as
    recorded failures: the loop goes on (a plug-in's bug never stops a run). `policy` is the
    round's policy, given to a judge that asks it (`round_policy`).
    """
    judge = ctx.engines.judge
    siblings = _siblings(ctx, pairs) if judge.needs_siblings else {}
    items = [
        JudgeItem(
            TaskPrompt.from_row(p.text, p.answer, p.messages),
            r.text,
            {"siblings": siblings[r.id], "repeat": repeat} if siblings else {"repeat": repeat},
        )
        for r, p in pairs
    ]
    verdicts = safe_judge(judge, items, policy)
    rows = [
        dict(response_id=r.id, judge=judge.name, repeat=repeat, **_verdict_columns(v))
        for (r, _), v in zip(pairs, verdicts, strict=True)
    ]
    with transaction(ctx.sessions) as s:
        queries.insert_ignore(s, Judgment, rows)
    commit_point("judging")


def missing_judgments(
    ctx: Context, round_id: int
) -> list[tuple[int, list[tuple[Response, Prompt]]]]:
    """(repeat, chunk) of the round's responses without that repeat's judgment; one commit each."""
    # One judge chunk per generation block's worth of responses.
    size = ctx.cfg.generation.prompts_per_batch * ctx.cfg.generation.samples_per_prompt
    name = ctx.engines.judge_name
    chunks = []
    for repeat in range(ctx.cfg.judge.repeats):
        with ctx.sessions() as s:
            todo = queries.responses_missing_judgment(s, round_id, name, repeat)
        chunks += [(repeat, todo[i : i + size]) for i in range(0, len(todo), size)]
    return chunks


def judge_response_ids(
    ctx: Context, round_id: int, response_ids: list[int], repeat: int = 0
) -> int:
    """Judge those of these responses that have no judgment (this repeat) yet; returns how many
    were judged. A chunk delivered twice judges nothing the second time.
    """
    with ctx.sessions() as s:
        todo = queries.responses_missing_judgment(
            s, round_id, ctx.engines.judge_name, repeat, response_ids=response_ids
        )
    if todo:
        judge_responses(ctx, todo, repeat, round_policy(ctx, round_id))
    return len(todo)


def judge_round(ctx: Context, round_id: int) -> None:
    """Judge every response of the round that has no judgment yet (each configured repeat):
    its samples, and after the revise stage its revisions."""
    chunks = missing_judgments(ctx, round_id)
    if not chunks:
        return
    policy = round_policy(ctx, round_id)
    with ctx.reporter.bar("judging", sum(len(c) for _, c in chunks)) as advance:
        for repeat, chunk in chunks:
            judge_responses(ctx, chunk, repeat, policy)
            advance(len(chunk))


def store_judge_eval(ctx: Context, round_id: int) -> None:
    """Store the round's judge meta-evaluation (metrics of stage `judge_eval`, see
    `judge_eval_metrics`) over its samples (not revisions): the failed share of judgments; on
    a verifiable task, the agreement with the verifier over the first `judge.meta_eval_prompts`
    prompts; for a pairwise judge, its position-bias rate."""
    n_prompts, name = ctx.cfg.judge.meta_eval_prompts, ctx.engines.judge_name
    with ctx.sessions() as s:
        round_index = get_round(s, round_id).index
        counts = queries.judgment_status_counts(s, round_id, name)
        scored = [r for r in queries.scored_responses(s, round_id, name) if r.revises_id is None]
        prompts = {
            p.id: TaskPrompt.from_row(p.text, p.answer, p.messages)
            for p in s.scalars(
                select(Prompt).where(Prompt.round_id == round_id, Prompt.index < n_prompts)
            )
        }
        traces = queries.judgment_traces(s, round_id, name, list(prompts))
    checked = None
    if ctx.cfg.judge.name != "verifier":
        task = ctx.engines.task
        checked = [
            Checked(r.prompt_id, r.score, task.verify(prompts[r.prompt_id], r.text)[0])
            for r in scored
            if r.prompt_id in prompts and prompts[r.prompt_id].answer is not None
        ]
    values = judge_eval_metrics(counts, checked, traces)
    with transaction(ctx.sessions) as s:
        queries.insert_ignore(
            s, Metric, metric_rows(ctx.run_id, round_index, "judge_eval", 0, values)
        )
