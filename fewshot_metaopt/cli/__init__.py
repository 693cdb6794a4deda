"""The ``fewshot-metaopt`` command line: train, evaluate, inspect-lr and plot."""

from .main import main

__all__ = ["main"]
