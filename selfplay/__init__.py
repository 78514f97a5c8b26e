"""selfplay: an online self-improvement and critique loop for language models."""

__version__ = "0.1.0"
