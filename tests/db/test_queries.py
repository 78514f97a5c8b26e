"""db.queries, the loop's queries, on SQLite and PostgreSQL: idempotent writes, what is missing,
what the stages read."""

from __future__ import annotations

from sqlalchemy import select

from db import queries
from db.engine import transaction
from db.models import Checkpoint, Judgment, Metric, Pair, Response, ResponseLogprob
from db.summaries import count_rows


def test_insert_ignore_makes_redelivery_a_noop(small_store):
    sessions, ids = small_store
    with transaction(sessions) as s:
        responses = list(s.scalars(select(Response)))
    rows = [
        dict(response_id=r.id, judge="verifier", repeat=0, status="ok", score=float(r.sample_index))
        for r in responses
    ]
    with transaction(sessions) as s:
        assert queries.insert_ignore_counted(s, Judgment, rows) == 3
    with transaction(sessions) as s:
        assert queries.insert_ignore_counted(s, Judgment, rows) == 0
        assert queries.insert_ignore_counted(s, Judgment, []) == 0
        queries.insert_ignore(s, Judgment, rows)  # the uncounted write path skips them too
        queries.insert_ignore(s, Judgment, [])
    with transaction(sessions) as s:
        counts = count_rows(s, ids["run"])
    assert counts["responses"] == 3 and counts["judgments"] == 3 and counts["prompts"] == 2


def test_lookups_return_none_for_what_is_not_stored(small_store):
    sessions, ids = small_store
    with transaction(sessions) as s:
        s.add(Checkpoint(run_id=ids["run"], round_index=0, path="/c0", heldout_score=0.5))
        s.add(Checkpoint(run_id=ids["run"], round_index=1, path="/c1", heldout_score=0.5))
        s.add(Checkpoint(run_id=ids["run"], round_index=2, path="/c2", heldout_score=0.25))
    with sessions() as s:
        assert queries.get_run(s, "r").id == ids["run"] and queries.get_run(s, "nope") is None
        assert queries.get_round(s, ids["run"], 0).id == ids["round"]
        assert queries.get_round(s, ids["run"], 1) is None
        assert queries.get_checkpoint(s, ids["run"], -1).id == ids["ckpt"]
        assert queries.get_checkpoint(s, ids["run"], 7) is None
        # The best heldout_score (the metric), the earliest among equals; unevaluated ones never count.
        assert queries.best_checkpoint(s, ids["run"]).path == "/c0"
        assert queries.best_checkpoint(s, ids["run"], before=0) is None


def test_missing_work_queries(small_store):
    sessions, ids = small_store
    with sessions() as s:
        # p0 has 3 responses, p1 none: with K=3 only p1 is missing, with K=4 both.
        assert [p.id for p in queries.prompts_missing_responses(s, ids["round"], 3)] == [ids["p1"]]
        assert len(queries.prompts_missing_responses(s, ids["round"], 4)) == 2
        todo = queries.responses_missing_judgment(s, ids["round"], "verifier")
        assert len(todo) == 3 and all(p.id == ids["p0"] for _, p in todo)
    first, second = todo[0][0].id, todo[1][0].id
    with transaction(sessions) as s:
        queries.insert_ignore(
            s,
            Judgment,
            [
                dict(response_id=first, judge="verifier", repeat=0, status="ok", score=1.0),
                dict(response_id=second, judge="verifier", repeat=0, status="failed", error="x"),
            ],
        )
    with sessions() as s:
        remaining = queries.responses_missing_judgment(s, ids["round"], "verifier")
        assert [r.id for r, _ in remaining] == [todo[2][0].id]
        # Only successful judgments count as scores.
        scored = queries.scored_responses(s, ids["round"], "verifier")
        assert [(x.response_id, x.score) for x in scored] == [(first, 1.0)]
        assert queries.judgment_status_counts(s, ids["round"], "verifier") == {"ok": 1, "failed": 1}


def test_critiques_traces_and_revisions(small_store):
    sessions, ids = small_store
    with sessions() as s:
        r0, r1, r2 = (r.id for r, _ in queries.responses_missing_judgment(s, ids["round"], "v"))
    judgment = dict(judge="v", status="ok", score=1.0)
    with transaction(sessions) as s:
        queries.insert_ignore(
            s,
            Judgment,
            [
                dict(judgment, response_id=r0, repeat=0, critique="too long", trace={"t": 0}),
                dict(judgment, response_id=r0, repeat=1, critique="too long"),
                dict(judgment, response_id=r0, repeat=2, critique="wrong sign"),
                dict(judgment, response_id=r1, repeat=0, critique="  "),
                dict(judgment, response_id=r2, repeat=0, status="failed", critique="x"),
            ],
        )
        revision = Response(
            round_id=ids["round"],
            prompt_id=ids["p0"],
            sample_index=8,
            checkpoint_id=ids["ckpt"],
            text="A:0 revised",
            token_ids=[5],
            num_tokens=1,
            logprob=-1.0,
            finish_reason="stop",
            revises_id=r0,
        )
        s.add(revision)
    with sessions() as s:
        # Distinct texts of ok judgments, repeats in order; blank critiques are none.
        assert queries.critiques(s, [r0, r1, r2], "v") == {r0: "too long\nwrong sign"}
        assert queries.judgment_traces(s, ids["round"], "v", [ids["p0"]]) == [
            {"t": 0},
            None,
            None,
            None,
        ]
        assert queries.revised_ids(s, ids["round"]) == {r0}


def test_training_pairs_and_logprobs(small_store):
    sessions, ids = small_store
    with sessions() as s:
        r = [r for r, _ in queries.responses_missing_judgment(s, ids["round"], "v")]
    with transaction(sessions) as s:
        pair = dict(round_id=ids["round"], prompt_id=ids["p0"], chosen_score=1.0)
        s.add(
            Pair(
                **pair,
                chosen_id=r[0].id,
                rejected_id=r[2].id,
                rejected_score=0.0,
                margin=1.0,
                builder="max_min",
            )
        )
        s.add(
            Pair(
                **pair,
                chosen_id=r[0].id,
                rejected_id=r[1].id,
                rejected_score=0.5,
                margin=0.5,
                builder="replay:r0",
            )
        )
        queries.insert_ignore(
            s,
            ResponseLogprob,
            [dict(response_id=r[0].id, checkpoint_id=ids["ckpt"], logprob=-3.5)],
        )
    with sessions() as s:
        tp, replayed = queries.training_pairs(s, ids["round"])
        assert tp.prompt == "Q:1+1=" and tp.chosen_token_ids == [5, 6, 0]
        assert tp.rejected_token_ids == [5, 6, 2]
        assert (tp.chosen_sample_index, tp.rejected_sample_index) == (0, 2)
        assert replayed.rejected_id == r[1].id
        assert queries.pair_ids(s, ids["round"]) == [tp.pair_id]  # replayed copies excluded
        assert queries.logprobs_for(s, ids["ckpt"], [r[0].id, r[2].id]) == {r[0].id: -3.5}


def test_delete_metrics_drops_one_stage_of_one_round(small_store):
    sessions, ids = small_store
    metric = dict(run_id=ids["run"], step=0, name="loss", value=1.0)
    with transaction(sessions) as s:
        s.add_all(
            [
                Metric(**metric, round_index=0, stage="train"),
                Metric(**metric, round_index=0, stage="eval"),
                Metric(**metric, round_index=1, stage="train"),
            ]
        )
    with transaction(sessions) as s:
        queries.delete_metrics(s, ids["run"], 0, "train")
    with sessions() as s:
        kept = s.execute(select(Metric.round_index, Metric.stage).order_by(Metric.id)).all()
    assert [tuple(k) for k in kept] == [(0, "eval"), (1, "train")]
