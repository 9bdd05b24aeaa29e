"""Two processes under torchrun (gloo, CPU): DDP training and sharded inference against one process.

The test launches ``python -m torch.distributed.run --nproc_per_node=2`` on this file (rendezvous on
127.0.0.1, port chosen by the OS); each rank runs the scenarios below and saves what it got, and the
test compares that with the same scenarios run here in one process.

What "matching" means (docs/distributed.md): the same items per optimiser step (each global batch
split across the ranks, or a DistributedSampler whose per-rank batch is half the global one) and
per-item losses that do not depend on the rest of the batch, which batch norm in training mode
breaks; so the encoders keep their norm statistics fixed (``freeze_norm=True``) and the data has no
random augmentation. Then the final weights agree to float tolerance (the sums are only reordered),
and the logged losses and validation metrics too. Sharded inference is compared exactly.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

REPO = Path(__file__).resolve().parents[2]


class Fixed(Dataset):
    """Deterministic in-memory images (no augmentation): an item's loss depends on the item alone."""

    def __init__(self, n, size=16, seed=0, labelled=True):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % 2 if labelled else torch.full((n,), -1)
        self.images = torch.randn((n, 1, size, size), generator=g) + (torch.arange(n) % 2).view(-1, 1, 1, 1).float()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": self.labels[i], "case_id": f"case{i:02d}"}


def _strategy(name, hparams=None):
    from medtl.models import Head, build_encoder
    from medtl.strategies.registry import get_strategy

    torch.manual_seed(0)
    enc = build_encoder("resnet10")
    return get_strategy(name)(enc, Head(enc.out_features, "binary"), hparams)


def scenario_plain(run_dir):
    """Plain single-process loaders (the trainer splits each global batch of 3 over the ranks: 2 + 1,
    and the last global batch of 2: 1 + 1); full fine-tuning; 2 epochs, then resumed to 3."""
    from medtl.engine import fit

    def loaders():
        return (DataLoader(Fixed(11), batch_size=3, shuffle=True, generator=torch.Generator().manual_seed(1)),
                DataLoader(Fixed(7, seed=1), batch_size=3))

    s = _strategy("full", {"freeze_norm": True, "lr": 0.01})
    # fp32: the ranks must match one process to float tolerance (bf16 rounds each rank's partial sums)
    opts = {"seed": 3, "device": "cpu", "progress": False, "optimizer": "sgd", "amp": "off"}
    first = fit(s, *loaders(), run_dir=run_dir, epochs=2, **opts)
    resumed = fit(s, *loaders(), run_dir=run_dir, epochs=3, **opts)  # continues after last.pt's epoch 2
    return s, first.history + resumed.history[2:]


def scenario_sampler():
    """A DistributedSampler (seed 5, per-rank batch 4 // world) and LP-FT: the encoder is frozen in
    epoch 0 and thawed in epochs 1-2, so DDP is rebuilt when the trainable set changes."""
    from medtl.engine import fit
    from medtl.engine.distributed import current

    ctx = current()
    ds = Fixed(12, seed=2)
    sampler = DistributedSampler(ds, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=5)
    train = DataLoader(ds, batch_size=4 // ctx.world_size, sampler=sampler)
    s = _strategy("lp_ft", {"freeze_norm": True, "lr": 0.01, "lp_lr": 0.05, "lp_epochs": 1, "weight_decay": 0.0})
    result = fit(s, train, None, epochs=3, device="cpu", progress=False, optimizer="sgd", restore_best=False,
                 amp="off")
    return s, result.history


def scenario_dann():
    """Domain adaptation (a discriminator, target batches sharded too, find_unused_parameters)."""
    from medtl.engine import fit

    src = DataLoader(Fixed(8, seed=3), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(2))
    tgt = DataLoader(Fixed(8, seed=4, labelled=False), batch_size=4, shuffle=True,
                     generator=torch.Generator().manual_seed(3))
    s = _strategy("dann")
    fit(s, src, None, target_loader=tgt, epochs=1, device="cpu", progress=False, restore_best=False, amp="off")
    return s


def scenario_unused():
    """A trainable parameter outside the loss with find_unused_parameters=False: one clear error, on
    every rank (no hang)."""
    from medtl.engine import fit
    from medtl.errors import MedtlError

    s = _strategy("full", {"freeze_norm": True})
    s.spare = torch.nn.Linear(2, 2)  # trains, never used
    try:
        fit(s, DataLoader(Fixed(8), batch_size=4), None, epochs=1, device="cpu", progress=False,
            find_unused_parameters=False)
    except MedtlError as err:
        return str(err)
    return "no error"


def scenario_predict():
    from medtl.engine import evaluate, evaluate_sharded, predict, predict_sharded

    s = _strategy("full").eval()
    loader = DataLoader(Fixed(7, seed=6), batch_size=3)  # batches of 3, 3, 1: rank 0 gets one, rank 1 two
    return {"sharded": predict_sharded(s, loader), "single": predict(s, loader),
            "sharded_metrics": evaluate_sharded(s, loader), "single_metrics": evaluate(s, loader)}


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def scenario_uneven_gather(rank: int) -> torch.Tensor:
    """MoCo's queue gathers keys from every rank; a last global batch of 5 splits 3 + 2."""
    from medtl.strategies.ssl import _gather

    rows = torch.arange(3.0).view(3, 1) if rank == 0 else torch.tensor([[10.0], [11.0]])
    return _gather(rows)


def worker(out: Path) -> None:
    from medtl.engine.distributed import init_distributed

    ctx = init_distributed("cpu")
    assert ctx.world_size == 2 and ctx.backend == "gloo", ctx
    mine = out / f"rank{ctx.rank}"
    mine.mkdir(parents=True, exist_ok=True)
    s, history = scenario_plain(out / "plain_run")
    torch.save(_state(s), mine / "plain.pt")
    (mine / "plain.json").write_text(json.dumps(history))
    s, history = scenario_sampler()
    torch.save(_state(s), mine / "sampler.pt")
    (mine / "sampler.json").write_text(json.dumps(history))
    torch.save(_state(scenario_dann()), mine / "dann.pt")
    (mine / "predict.pkl").write_bytes(pickle.dumps(scenario_predict()))
    (mine / "unused.txt").write_text(scenario_unused())
    torch.save(scenario_uneven_gather(ctx.rank), mine / "gather.pt")
    (mine / "done").write_text("ok")


# -- one-process pieces ---------------------------------------------------------------------------------
@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("n,batch,drop_last", [(11, 3, False), (10, 4, False), (9, 4, True), (7, 3, False)])
def test_sharded_batches_split_each_global_batch(world, n, batch, drop_last):
    from torch.utils.data import BatchSampler, SequentialSampler

    from medtl.engine.distributed import ShardedBatchSampler

    glob = list(BatchSampler(SequentialSampler(range(n)), batch, drop_last))
    shards = [ShardedBatchSampler(BatchSampler(SequentialSampler(range(n)), batch, drop_last), r, world)
              for r in range(world)]
    per_rank = [list(s) for s in shards]
    kept = [b for b in glob if len(b) >= world]  # a global batch smaller than the world is skipped
    assert all(len(p) == len(kept) == len(s) for p, s in zip(per_rank, shards))
    for step, b in enumerate(kept):
        parts = [per_rank[r][step] for r in range(world)]
        assert sorted(i for p in parts for i in p) == b and all(parts)


def test_torchrun_environment(monkeypatch):
    from medtl.engine.distributed import current, torchrun_env
    from medtl.engine.trainer import TrainConfig, Trainer
    from medtl.errors import MedtlError

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert torchrun_env() is None and current().world_size == 1
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    env = torchrun_env()
    assert (env.rank, env.world_size, env.local_rank, env.enabled, env.is_main) == (1, 4, 1, True, False)
    assert Trainer(_strategy("full"), {"device": "cpu"}).env == env
    assert Trainer(_strategy("full"), {"device": "cpu", "distributed": "off"}).env is None
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(MedtlError, match="does not fit"):
        torchrun_env()
    with pytest.raises(MedtlError, match="distributed"):
        TrainConfig.from_dict({"distributed": "on"})


def test_sharding_is_a_no_op_in_one_process():
    from medtl.engine import evaluate, evaluate_sharded, shard_loader

    loader = DataLoader(Fixed(5), batch_size=2)
    assert shard_loader(loader) is loader
    s = _strategy("full").eval()
    assert evaluate_sharded(s, loader) == evaluate(s, loader)


def test_sync_batchnorm_conversion_is_undone():
    from medtl.engine.distributed import convert_sync_batchnorm, restore_batchnorm

    s = _strategy("full")
    before = {k: v for k, v in s.state_dict(keep_vars=True).items()}
    swaps = convert_sync_batchnorm(s)
    assert swaps and not any(isinstance(m, torch.nn.BatchNorm2d) for m in s.modules())
    after = s.state_dict(keep_vars=True)
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)  # shared tensors
    restore_batchnorm(swaps)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in s.modules())
    assert all(s.state_dict(keep_vars=True)[k] is before[k] for k in before)


# -- the tests (launcher side) -----------------------------------------------------------------------
def torchrun(args: list[str], timeout: float = 300, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=2`` with a c10d rendezvous on 127.0.0.1 and an OS-chosen port."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if Path("/sys/class/net/lo").exists():
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback: the host name may not resolve
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:0", "--max-restarts=0", *args]
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


# The one-process references run with the workers' thread count (torchrun sets OMP_NUM_THREADS=1).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    torchrun([__file__, "--worker", str(out)])
    for r in (0, 1):
        assert (out / f"rank{r}" / "done").exists(), f"rank {r} did not finish"
    return out


def _load(out, rank, name):
    return torch.load(out / f"rank{rank}" / f"{name}.pt", weights_only=True)


def _assert_close_states(got, ref, what):
    # Float tolerance: two ranks add the per-item gradients in another order (measured: 6e-8 at most).
    assert got.keys() == ref.keys()
    for k in ref:
        if ref[k].is_floating_point():
            torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{what} {k}: {m}")
        else:
            assert torch.equal(got[k], ref[k]), f"{what} {k}"


def _assert_same_across_ranks(out, name):
    a, b = _load(out, 0, name), _load(out, 1, name)
    for k in a:
        assert torch.equal(a[k], b[k]), f"{name}: rank 0 and rank 1 differ at {k}"


def test_plain_loaders_two_ranks_match_one_process_dist(two_ranks, tmp_path):
    ref_model, ref_history = scenario_plain(tmp_path / "ref")  # the same code, one process
    _assert_same_across_ranks(two_ranks, "plain")
    _assert_close_states(_load(two_ranks, 0, "plain"), _state(ref_model), "plain")
    history = json.loads((two_ranks / "rank0" / "plain.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1, 2]
    for got, ref in zip(history, ref_history):
        for key in ("train_loss", "train_task", "val_loss", "val_accuracy", "val_auroc"):
            assert got[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-7), key
        assert got["best"] == ref["best"]
    assert json.loads((two_ranks / "rank1" / "plain.json").read_text())[-1]["val_loss"] == history[-1]["val_loss"]
    # Only rank 0 wrote the run folder: one log line per epoch, not one per rank.
    run = two_ranks / "plain_run"
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]
    assert json.loads((run / "config.json").read_text())["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 3 and (run / "best.pt").exists()


def test_distributed_sampler_with_lp_ft_matches_one_process_dist(two_ranks):
    ref_model, ref_history = scenario_sampler()  # DistributedSampler(num_replicas=1), batch 4
    _assert_same_across_ranks(two_ranks, "sampler")
    got = _load(two_ranks, 0, "sampler")
    _assert_close_states(got, _state(ref_model), "sampler")
    start = _state(_strategy("lp_ft"))
    moved = [k for k in start if start[k].is_floating_point() and not torch.equal(start[k], got[k])]
    assert any(k.startswith("encoder.") for k in moved) and any(k.startswith("head.") for k in moved)
    history = json.loads((two_ranks / "rank0" / "sampler.json").read_text())
    for g, r in zip(history, ref_history):
        assert g["train_loss"] == pytest.approx(r["train_loss"], rel=1e-5)


def test_adaptation_strategy_keeps_ranks_identical_dist(two_ranks):
    _assert_same_across_ranks(two_ranks, "dann")
    start = _state(_strategy("dann"))
    got = _load(two_ranks, 0, "dann")
    assert any(not torch.equal(start[k], got[k]) for k in start if k.startswith("domain_loss"))  # it trained


def test_unused_parameters_give_one_clear_error_on_every_rank_dist(two_ranks):
    for rank in (0, 1):
        assert "find_unused_parameters=True" in (two_ranks / f"rank{rank}" / "unused.txt").read_text()


def test_sharded_inference_equals_single_process_dist(two_ranks):
    ref = scenario_predict()["single"]
    for rank in (0, 1):  # every rank holds the merged result
        res = pickle.loads((two_ranks / f"rank{rank}" / "predict.pkl").read_bytes())
        merged, single = res["sharded"], res["single"]
        assert merged.keys() == single.keys() == ref.keys()
        assert merged["case_id"] == single["case_id"] == [f"case{i:02d}" for i in range(7)]
        for key in ("logits", "prob", "label"):
            assert np.array_equal(merged[key], single[key]), key  # same batches, same kernels: bitwise
            np.testing.assert_allclose(merged[key], ref[key], rtol=1e-5, atol=1e-6)
        assert merged["loss"] == single["loss"] and merged["task"] == single["task"] == "binary"
        assert res["sharded_metrics"] == res["single_metrics"]


def test_uneven_batches_gather_in_rank_order_dist(two_ranks):
    for rank in (0, 1):
        got = torch.load(two_ranks / f"rank{rank}" / "gather.pt", weights_only=True)
        assert got.flatten().tolist() == [0.0, 1.0, 2.0, 10.0, 11.0]


def test_medtl_pretrain_moco_with_an_odd_batch_under_torchrun_dist(tmp_path):
    """A global batch of 5 on 2 processes is split 3 + 2 every step: MoCo's key gather once crashed on it."""
    from medtl.data.build import build_manifest
    from medtl.data.synthetic import write_synthetic_source

    src = write_synthetic_source(tmp_path / "data", "cxr", 16, seed=0, size=32)
    build_manifest(src, tmp_path / "data", group_near_copies=False).save(tmp_path / "m.csv")
    out = tmp_path / "moco"
    proc = torchrun(["-m", "medtl", "pretrain", "--mode", "moco", "--manifest", str(tmp_path / "m.csv"),
                     "--data-root", str(tmp_path / "data"), "--out", str(out), "--arch", "resnet10", "--image-size",
                     "32", "--epochs", "1", "--batch-size", "5", "--queue-size", "16", "--device", "cpu",
                     "--no-progress"])
    assert "wrote" in proc.stdout
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 1


def test_medtl_pretrain_under_torchrun_dist(tmp_path):
    from medtl.data.build import build_manifest
    from medtl.data.synthetic import write_synthetic_source

    src = write_synthetic_source(tmp_path / "data", "cxr", 16, seed=0, size=32)
    build_manifest(src, tmp_path / "data", group_near_copies=False).save(tmp_path / "m.csv")  # alike by design
    out = tmp_path / "run"
    proc = torchrun(["-m", "medtl", "pretrain", "--manifest", str(tmp_path / "m.csv"), "--data-root",
                     str(tmp_path / "data"), "--out", str(out), "--arch", "resnet10", "--image-size", "32",
                     "--epochs", "2", "--batch-size", "4", "--device", "cpu", "--no-progress"])
    assert "wrote" in proc.stdout
    raw = torch.load(out / "model.pt", weights_only=True)
    assert raw["meta"]["epochs"] == 2 and "val_loss" in raw["meta"]["metrics"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert json.loads((out / "config.json").read_text())["distributed"]["world_size"] == 2


def _synthetic_manifest(tmp_path):
    from medtl.data.build import build_manifest
    from medtl.data.synthetic import write_synthetic_source

    src = write_synthetic_source(tmp_path / "data", "cxr", 16, seed=0, size=32)
    build_manifest(src, tmp_path / "data", group_near_copies=False).save(tmp_path / "m.csv")
    return tmp_path / "m.csv", tmp_path / "data"


def test_moco_refuses_a_global_batch_that_leaves_a_process_one_image(tmp_path, monkeypatch):
    """A review: a global batch of 2 on 2 processes (MoCo, one image per GPU) ran in one process but crashed in
    the projection head's batch norm under torchrun with a raw ValueError; it is refused before training, naming
    the batch to give. (Supervised training with one image per process is not refused: an encoder's batch norm
    trains on one image where its last maps are larger than 1x1, as a 3D model with one volume per GPU needs.)"""
    from medtl.engine.pretrain import pretrain
    from medtl.errors import MedtlError

    manifest, root = _synthetic_manifest(tmp_path)
    for k, v in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(k, v)
    for batch in (2, 3):
        with pytest.raises(MedtlError, match=r"2 images per process \(--batch-size 4 or more\)"):
            pretrain(manifest, root, tmp_path / f"b{batch}", mode="moco", arch="resnet10", image_size=32, epochs=1,
                     batch_size=batch, ssl_hparams={"queue_size": 16}, device="cpu", progress=False)


def test_resuming_with_another_number_of_processes_is_said(tmp_path, caplog):
    """Allowed (the global batch stays), but batch norm and the steps per epoch depend on it: a warning says so."""
    import logging

    from medtl.engine.pretrain import pretrain

    manifest, root = _synthetic_manifest(tmp_path)
    opts = dict(arch="resnet10", image_size=32, batch_size=4, device="cpu", progress=False)
    pretrain(manifest, root, tmp_path / "run", epochs=1, **opts)
    config = tmp_path / "run" / "config.json"
    record = json.loads(config.read_text())
    record["distributed"]["world_size"] = 2  # as a torchrun run of 2 processes records it
    config.write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING, logger="medtl.engine.trainer"):
        pretrain(manifest, root, tmp_path / "run", epochs=2, **opts)
    assert "with 1 process(es), where its earlier epochs ran with 2" in caplog.text
    assert json.loads(config.read_text())["distributed"]["world_size"] == 1  # the latest, as the docs say


if __name__ == "__main__":  # a torchrun worker: python -m torch.distributed.run ... this_file --worker OUT
    if sys.argv[1:2] == ["--worker"]:
        worker(Path(sys.argv[2]))
