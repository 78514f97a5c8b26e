"""db.pairs on SQLite and PostgreSQL: filters, the literal prompt search, keyset pages and a
pair in detail, over the `demo` store (tests/conftest.py)."""

from __future__ import annotations

import math

import pytest
from sqlalchemy.orm import Session

from db.engine import make_engine
from db.pairs import MAX_PAGE, PairFilter, iter_pairs, list_pairs, pair_detail
from db.runs import InspectError, NotFound


@pytest.fixture
def s(seeded_url):
    engine = make_engine(seeded_url)
    with Session(bind=engine) as session:
        yield session
    engine.dispose()


def ids(s: Session, **filters: object) -> list[int]:
    return [p.id for p in list_pairs(s, PairFilter(**filters), limit=MAX_PAGE)]


def test_filters(s):
    everything = ids(s)
    assert len(everything) == 12 and everything == sorted(everything)
    assert len(ids(s, run="demo")) == 12
    round1 = list_pairs(s, PairFilter(run="demo", round=1))
    assert len(round1) == 6 and {p.round for p in round1} == {1}
    assert len(ids(s, min_margin=0.5)) == 6
    assert len(ids(s, judge="llm")) == 12 and ids(s, judge="nobody") == []
    assert len(ids(s, run="demo", round=1, min_margin=0.5, judge="verifier")) == 3


def test_search_is_a_literal_substring_of_the_prompt(s):
    # Prompts: "<script>alert(1)</script> 2+2=" and Q:01+1=, Q:02+1=, Q:11+1=, Q:12+1=.
    assert len(ids(s, search="<script>")) == 4
    assert len(ids(s, search="Q:1")) == 4 and len(ids(s, search="+1")) == 8
    assert len(ids(s, run="demo", round=1, search="<script>")) == 2
    assert ids(s, search="100%") == [] and ids(s, search="_1+") == [] and ids(s, search="%1") == []
    assert ids(s, search='"x"') == [] and ids(s, search="zzz") == []


def test_keyset_pages_and_batches_cover_every_pair_once(s):
    everything = ids(s)
    first = list_pairs(s, PairFilter(), limit=5)
    second = list_pairs(s, PairFilter(), after=first[-1].id, limit=5)
    assert [p.id for p in first + second] == everything[:10]
    assert list_pairs(s, PairFilter(), after=everything[-1]) == []
    batches = list(iter_pairs(s, PairFilter(), batch=5))
    assert [len(b) for b in batches] == [5, 5, 2]
    assert [p.id for b in batches for p in b] == everything
    assert [len(b) for b in iter_pairs(s, PairFilter(run="demo", round=0), batch=4)] == [4, 2]


def test_a_pair_row_carries_its_texts_scores_and_provenance(s):
    row = list_pairs(s, PairFilter(run="demo", round=1), limit=1)[0]
    assert (row.run, row.round, row.builder) == ("demo", 1, "max_min")
    assert (row.chosen, row.rejected, row.margin) == ("A3xxx", "A0", 1.0)
    assert (row.chosen_tokens, row.rejected_tokens) == (4, 1)
    assert row.prompt.startswith("<script>") and row.to_dict()["prompt_id"] == row.prompt_id


def test_pair_detail(s):
    pair_id = ids(s, run="demo", round=1)[0]
    d = pair_detail(s, pair_id)
    assert d.pair.id == pair_id and (d.answer, d.weight) == ("4", 1.0)
    assert (d.chosen.text, d.rejected.text) == ("A3xxx", "A0")
    assert (d.chosen.checkpoint_path, d.chosen.checkpoint_round) == ("/ckpt/0", 0)
    assert [(j.judge, j.score) for j in d.chosen.judgments] == [("llm", 1.0), ("verifier", 1.0)]
    assert d.chosen.judgments[1].critique == "critique 3"
    assert d.chosen.judgments[0].trace == {"tool": "calc", "calls": [3]}
    assert d.to_dict()["rejected"]["judgments"][1]["critique"] == "critique 0"


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({"round": 1}, "a round index needs a run"),
        ({"run": "demo", "round": -1}, "round: must be ≥ 0"),
        ({"min_margin": math.nan}, "min_margin: must be a number"),
        ({"search": "  "}, "search: must not be blank"),
        ({"search": "x" * 201}, "search: at most 200 characters"),
    ],
)
def test_a_bad_filter_names_its_field(filters, message):
    with pytest.raises(InspectError, match=message):
        PairFilter(**filters)


def test_bad_pages_and_unknown_names_and_ids(s):
    with pytest.raises(InspectError, match="limit: must be between 1 and 500"):
        list_pairs(s, PairFilter(), limit=MAX_PAGE + 1)
    with pytest.raises(InspectError, match="after: must be ≥ 0"):
        list_pairs(s, PairFilter(), after=-1)
    with pytest.raises(NotFound, match="no run named 'nope'"):
        list_pairs(s, PairFilter(run="nope"))
    with pytest.raises(NotFound, match="has no round 7"):
        list_pairs(s, PairFilter(run="demo", round=7))
    with pytest.raises(NotFound, match="no pair with id 999999"):
        pair_detail(s, 999_999)
