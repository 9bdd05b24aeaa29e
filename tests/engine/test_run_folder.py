"""RunFolder (medtl.engine.run_folder): the run folder's file names, and the trainer writing through it."""

import json

import torch
from torch.utils.data import DataLoader

from medtl.engine import fit
from medtl.engine.run_folder import RunFolder
from medtl.models import Head, build_encoder
from medtl.strategies.registry import get_strategy


def test_file_names_are_the_ones_run_folders_have_always_had(tmp_path):
    f = RunFolder(tmp_path / "run")
    names = {p.name for p in (f.config, f.metrics, f.last, f.best, f.predictions, f.baseline, f.features)}
    assert names == {"config.json", "metrics.jsonl", "last.pt", "best.pt", "predictions.csv", "baseline.json",
                     "features"}
    assert f.best.parent == tmp_path / "run"


def test_log_round_trip_truncate_and_clear(tmp_path):
    f = RunFolder(tmp_path).create()
    assert f.read_log() == []
    for epoch in range(3):
        f.append_log({"epoch": epoch, "loss": 1.0 / (epoch + 1), "lr": (0.1, epoch)})
    assert [r["epoch"] for r in f.read_log()] == [0, 1, 2]
    assert f.read_log()[1]["loss"] == 0.5 and f.read_log()[2]["lr"] == [0.1, 2]
    f.truncate_log(2)
    assert [r["epoch"] for r in f.read_log()] == [0, 1]
    f.write_log([{"fit": 0}])
    assert f.read_log() == [{"fit": 0}]
    f.clear_log()
    assert not f.metrics.exists()
    f.clear_log()  # nothing to clear: no error
    f.write_config({"a": 1, "path": tmp_path})
    assert json.loads(f.config.read_text()) == {"a": 1, "path": str(tmp_path)}


def test_finds_jobs_below_a_root(tmp_path):
    for job in ("t/b/seed0", "t/a/seed1"):
        RunFolder(tmp_path / job).create().append_log({"epoch": 0})
        RunFolder(tmp_path / job).predictions.write_text("case_id\n")
    assert RunFolder.logs_under(tmp_path) == [tmp_path / "t/a/seed1/metrics.jsonl", tmp_path / "t/b/seed0/metrics.jsonl"]
    assert [p.parent.name for p in RunFolder.predictions_under(tmp_path)] == ["seed1", "seed0"]


def test_the_trainer_writes_what_run_folder_reads(tmp_path):
    torch.manual_seed(0)
    enc = build_encoder("resnet10")
    strategy = get_strategy("full")(enc, Head(enc.out_features, "binary"))
    items = [{"image": torch.randn(1, 16, 16), "label": torch.tensor(i % 2)} for i in range(8)]
    result = fit(strategy, DataLoader(items, batch_size=4), DataLoader(items, batch_size=4), run_dir=tmp_path,
                 epochs=2, device="cpu", progress=False)
    folder = RunFolder(tmp_path)
    assert [r["epoch"] for r in folder.read_log()] == [r["epoch"] for r in result.history] == [0, 1]
    assert folder.read_log()[1]["val_loss"] == result.history[1]["val_loss"]
    assert folder.last.exists() and folder.best.exists()
    assert json.loads(folder.config.read_text())["strategy"] == "full"
