"""Transfer strategies: fine-tuning and domain adaptation behind one interface (see base.py)."""

from medtl.strategies.base import STRATEGIES, Strategy, default_hparams, get_strategy, register_strategy

__all__ = ["STRATEGIES", "Strategy", "default_hparams", "get_strategy", "register_strategy"]
