"""Hidden unit tests in the sandbox: where the code of a response is found."""

from __future__ import annotations

from selfplay.sandbox import extract_code


def test_extract_code_takes_a_fenced_block_or_the_bare_response():
    assert (
        extract_code("Here:\n```python\ndef f(x): return 1\n```\nDone.") == "def f(x): return 1\n"
    )
    assert extract_code("A: def f(x): return 2 ") == "def f(x): return 2"
    assert extract_code("def f(x):\n    return 3\n") == "def f(x):\n    return 3"
