"""The names of medtl's model files, below the modules that write and read them.

``weights.py`` recognises both kinds when it loads weights; ``checkpoint.py`` writes and reads the
model file and the trainer its resumable training state.
"""

from __future__ import annotations

from typing import Any

CHECKPOINT_FORMAT = "medtl-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
TRAIN_STATE_FORMAT = "medtl-train-state"


def is_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT
