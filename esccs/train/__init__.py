"""Training: the multi-step transfer (stages), ESCCS and baseline recipes, evaluation, and the ``esccs train`` run.

Imports torch; the torch-free pieces it uses (filters, metrics) live in :mod:`esccs.train.filters` and
:mod:`esccs.metrics`.
"""

from esccs.train.config import TrainConfig, load_config
from esccs.train.methods import resolve_methods
from esccs.train.run import load_results, train

__all__ = ["TrainConfig", "load_config", "train", "resolve_methods", "load_results"]
