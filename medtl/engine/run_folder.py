"""A training run's folder: the one place its file names are defined, with their readers and writers.

The trainer, the cached-feature probe, the pipeline's jobs and the results pages all find a run's files
through :class:`RunFolder`; the names are those run folders have always had, so old folders still read::

    config.json       what trained the run (options, strategy, hyper-parameters, model)
    metrics.jsonl     one JSON object per finished epoch (per fitted penalty for the L-BFGS probe)
    last.pt           full training state after the last finished epoch (resume)
    best.pt           the model (medtl checkpoint) at the best monitored value
    predictions.csv   a pipeline job's val/test predictions; written last, so it marks the job done
    baseline.json     the regression baseline of a training-mean job
    features/         the cached frozen-encoder features of a probe (train.pt, val.pt)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from medtl.errors import MedtlError
from medtl.paths import write_text_atomic
from medtl.plain import plain


class RunFolder:
    CONFIG = "config.json"
    METRICS = "metrics.jsonl"
    LAST = "last.pt"
    BEST = "best.pt"
    PREDICTIONS = "predictions.csv"
    BASELINE = "baseline.json"
    FEATURES = "features"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def last(self) -> Path:
        return self.path / self.LAST

    @property
    def best(self) -> Path:
        return self.path / self.BEST

    @property
    def predictions(self) -> Path:
        return self.path / self.PREDICTIONS

    @property
    def baseline(self) -> Path:
        return self.path / self.BASELINE

    @property
    def features(self) -> Path:
        return self.path / self.FEATURES

    def best_pending(self, epoch: int) -> Path:
        """``best.pt`` of ``epoch`` before ``last.pt`` records that epoch as the best: a kill between the two
        writes must not leave a best.pt whose epoch the resumed run's record does not name."""
        return self.path / f"{self.BEST}.epoch{epoch}.pending"

    def settle_best(self, best_epoch: int | None) -> None:
        """Make the pending ``best.pt`` of ``best_epoch`` (the one ``last.pt`` records) the best; drop others."""
        for pending in [*self.path.glob(f"{self.BEST}.epoch*.pending"), *self.path.glob(f"{self.BEST}.epoch*.pending.tmp")]:
            if best_epoch is not None and pending == self.best_pending(best_epoch):
                pending.replace(self.best)
            else:
                pending.unlink(missing_ok=True)

    def create(self) -> RunFolder:
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def write_config(self, config: dict[str, Any]) -> Path:
        return write_text_atomic(self.config, json.dumps(plain(config), indent=2, default=str) + "\n")

    # -- the metrics log: one JSON object a line --------------------------------------------------
    @staticmethod
    def read_log_file(path: str | Path) -> list[dict[str, Any]]:
        """The records; a last line cut short (a kill or a full disk mid-append) is left out, as the epoch it
        logged is trained again; a damaged line before it is an error naming the line."""
        path = Path(path)
        if not path.exists():
            return []
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        records = []
        for i, line in enumerate(lines, 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                if i == len(lines):
                    logging.getLogger(__name__).warning("%s: its last line is cut short (%s): left out", path, err)
                    break
                raise MedtlError(f"line {i} is not a JSON record ({err}); only the last line may be cut short",
                                 path) from None
        return records

    def read_log(self) -> list[dict[str, Any]]:
        return self.read_log_file(self.metrics)

    def append_log(self, record: dict[str, Any]) -> None:
        with open(self.metrics, "a") as f:
            f.write(json.dumps(plain(record)) + "\n")

    def write_log(self, records: list[dict[str, Any]]) -> None:
        write_text_atomic(self.metrics, "".join(json.dumps(plain(record)) + "\n" for record in records))

    def truncate_log(self, upto_epoch: int) -> None:
        """Keep the records of the epochs before ``upto_epoch`` (a resumed run rewrites the rest)."""
        if self.metrics.exists():
            self.write_log([r for r in self.read_log() if r["epoch"] < upto_epoch])

    def clear_log(self) -> None:
        self.metrics.unlink(missing_ok=True)

    # -- pipeline jobs ----------------------------------------------------------------------------
    @classmethod
    def logs_under(cls, root: str | Path) -> list[Path]:
        """Every run's metrics log below ``root``, sorted."""
        return sorted(Path(root).rglob(cls.METRICS))

    @classmethod
    def predictions_under(cls, root: str | Path) -> list[Path]:
        """Every job's predictions table below ``root``, sorted."""
        return sorted(Path(root).rglob(cls.PREDICTIONS))


__all__ = ["RunFolder"]
