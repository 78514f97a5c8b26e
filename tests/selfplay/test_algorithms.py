import subprocess
import sys

import pytest

from selfplay.algorithms import ALGORITHM_PRESETS, BUILDERS, LOSSES, combination_errors


def test_registry_imports_nothing_heavy():
    code = (
        "import sys, selfplay.algorithms; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'torch', 'transformers', 'pydantic', 'selfplay'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['selfplay', 'selfplay.algorithms']"


def test_fixed_references_and_extra_sources():
    assert {n: s.reference for n, s in LOSSES.items() if s.reference != "config"} == {
        "simpo": None,
        "rft": None,
        "dno": "previous",
        "sppo": "previous",
        "inpo": "sft",
        "xpo": "sft",
    }
    assert [n for n, s in LOSSES.items() if s.needs_prev] == ["inpo"]
    assert [n for n, s in LOSSES.items() if s.needs_targets] == ["sppo"]
    assert [n for n, s in LOSSES.items() if s.needs_ref_sample] == ["xpo"]


@pytest.mark.parametrize("name", sorted(ALGORITHM_PRESETS))
def test_presets_name_registered_parts_that_fit(name):
    preset = ALGORITHM_PRESETS[name]
    loss = preset["training"]["loss"]
    builder = preset.get("pairing", {}).get("builder", "max_min")
    samples = preset.get("generation", {}).get("reference_samples", 0)
    assert loss in LOSSES and builder in BUILDERS
    assert combination_errors(loss, builder, reference_samples=samples, revise=False) == []
    fixed = LOSSES[loss].reference
    if fixed in ("previous", "sft"):  # training.reference defaults to "previous"
        assert preset["training"].get("reference", "previous") == fixed


@pytest.mark.parametrize(
    ("loss", "builder", "samples", "revise", "message"),
    [
        ("sppo", "max_min", 0, False, "loss sppo needs win-probability targets"),
        ("xpo", "dno", 4, False, "loss xpo needs policy-vs-reference pairs"),
        ("dpo", "sppo", 0, False, "'sppo' makes win-probability targets: use loss sppo"),
        ("dpo", "xpo", 0, False, "generation.reference_samples must be >= 1"),
        ("sppo", "sppo", 0, True, "does not combine with the sppo builder"),
        ("xpo", "xpo", 4, True, "does not combine with the xpo builder"),
    ],
)
def test_combination_errors(loss, builder, samples, revise, message):
    errors = combination_errors(loss, builder, reference_samples=samples, revise=revise)
    assert len(errors) == 1 and message in errors[0]


def test_plain_combinations_fit():
    assert combination_errors("dpo", "xpo", reference_samples=2, revise=False) == []
    assert combination_errors("dno", "dno", reference_samples=0, revise=True) == []
