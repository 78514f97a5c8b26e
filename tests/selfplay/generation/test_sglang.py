"""SGLang cannot be installed on this CPU machine: what runs here is its missing-extra error."""

import importlib.util

import pytest

from selfplay.config import GenerationConfig
from selfplay.generation import make_backend
from selfplay.generation.sglang import SGLangBackend


@pytest.mark.skipif(importlib.util.find_spec("sglang") is not None, reason="sglang installed")
def test_missing_sglang_names_the_extra_to_install(tmp_path):
    backend = make_backend(GenerationConfig(backend="sglang"))
    assert isinstance(backend, SGLangBackend)
    with pytest.raises(ImportError, match=r"pip install 'selfplay\[sglang\]'"):
        backend.load(str(tmp_path))
