"""Transfer strategies: fine-tuning and domain adaptation behind one interface (see base.py).

Find one by name with ``medtl.strategies.registry.get_strategy``: the registry module imports both the
fine-tuning strategies here and the adaptation strategies of ``medtl.adapt``, which build on base.py.
"""

from medtl.strategies.base import Strategy, register_strategy

__all__ = ["Strategy", "register_strategy"]
