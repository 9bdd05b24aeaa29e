"""Every transfer method by name: the registry, filled by importing the modules that define them.

This module sits above both kinds of strategy (``medtl.strategies.finetune`` and
``medtl.adapt.strategies``, which import :mod:`medtl.strategies.base`), so importing it registers every
method; a module that fails to import fails here, loudly, instead of leaving its names out.
"""

from __future__ import annotations

from typing import Any

import medtl.adapt.strategies  # noqa: F401  (registers joint, dann, cdan, cdan_e, dan, coral, mcc)
import medtl.strategies.finetune  # noqa: F401  (registers scratch, full, feature_extraction, ...)
from medtl.errors import unknown
from medtl.strategies.base import STRATEGIES, Strategy


def get_strategy(name: str) -> type[Strategy]:
    if name not in STRATEGIES:
        raise unknown("strategy", name, sorted(STRATEGIES), "strategy")
    return STRATEGIES[name]


def default_hparams(name: str) -> dict[str, Any]:
    return dict(get_strategy(name).DEFAULTS)


__all__ = ["STRATEGIES", "default_hparams", "get_strategy"]
