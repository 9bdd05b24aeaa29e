"""Values as plain Python types: the one JSON cleaner.

Every file medtl writes as JSON (reports, run folders, training logs) and every checkpoint's metadata
(which ``torch.load(..., weights_only=True)`` must read back without pickled code) goes through
:func:`plain`.
"""

from __future__ import annotations

import math
import os
from typing import Any

from medtl.errors import MedtlError


def plain(obj: Any, where: str = "value") -> Any:
    """``obj`` as dict/list/str/int/float/bool/None: NumPy and torch scalars and arrays become numbers and
    lists, paths strings, tuples lists, keys strings, and NaN or infinite floats None (JSON has no NaN:
    None reads as "undefined"). Anything else is refused, naming ``where``."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if hasattr(obj, "dtype") and hasattr(obj, "tolist"):  # NumPy / torch scalars and arrays
        return plain(obj.tolist(), where)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, dict):
        return {str(k): plain(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v, where) for v in obj]
    raise MedtlError(f"must be plain values (dict, list, str, number, bool or None); {type(obj).__name__} is not",
                     where)


def differing_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two JSON-like values (``train.epochs``, ``seed``), down
    through nested dicts and lists of mappings of one length, each item named by its label or name
    (``strategies[full].hparams.lr``): what a refused resume names."""
    import json

    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new) \
            and all(isinstance(x, dict) for x in old + new):
        return [k for i, (a, b) in enumerate(zip(old, new)) for k in differing_keys(a, b, f"{prefix}[{_item_name(a, i)}]")]
    if isinstance(old, dict) and new is None or old is None and isinstance(new, dict):
        old, new = old or {}, new or {}  # a mapping left at its default ({}) is absent from a minimal record
    if not (isinstance(old, dict) and isinstance(new, dict)):
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (old, new)):
            return [prefix] if float(old) != float(new) else []  # 1 and 1.0 are one setting
        return [prefix] if json.dumps(old, sort_keys=True) != json.dumps(new, sort_keys=True) else []
    return [k for key in sorted(set(old) | set(new))
            for k in differing_keys(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key))]


def _item_name(item: dict, index: int) -> str:
    """How a key path names a list item: its label (a strategy's: name + lift), its name, else its index."""
    if item.get("label"):
        return str(item["label"])
    if item.get("name"):
        lift = item.get("lift")
        return str(item["name"]) + (f"+{lift}" if lift and lift != "none" else "")
    return str(index)
