import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from medtl.engine import StopTraining, TrainConfig, Trainer, evaluate, fit
from medtl.engine.trainer import amp_dtype
from medtl.errors import MedtlError
from medtl.models import Head, build_encoder, read_checkpoint
from medtl.strategies import Strategy
from medtl.strategies.registry import get_strategy


class TinyImages(Dataset):
    """In-memory dicts like the data layer's, with a random 'augmentation' drawn from torch's RNG."""

    def __init__(self, n=8, size=16, dims=2, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % 2
        shape = (n, 1) + (size,) * dims
        self.images = torch.randn(shape, generator=g) + self.labels.view(-1, *[1] * (dims + 1)).float()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        noise = 0.05 * torch.randn_like(self.images[i])  # reseeded per epoch by the trainer
        return {"image": self.images[i] + noise, "label": self.labels[i], "case_id": f"case{i}"}


def _strategy(name="full", hparams=None, seed=0):
    torch.manual_seed(seed)
    enc = build_encoder("resnet10")
    return get_strategy(name)(enc, Head(enc.out_features, "binary"), hparams)


def _loaders(n=8, batch=4):
    return (DataLoader(TinyImages(n), batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(1)),
            DataLoader(TinyImages(4, seed=1), batch_size=4))


def test_fit_writes_the_run_folder(tmp_path):
    train, val = _loaders()
    result = fit(_strategy(), train, val, run_dir=tmp_path, epochs=2, progress=False, device="cpu")
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1] == [r["epoch"] for r in result.history]
    for key in ("train_loss", "train_task", "val_loss", "val_accuracy", "val_auroc", "lr", "seconds"):
        assert key in lines[0], key
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and state["strategy"] == "full"
    best = read_checkpoint(tmp_path / "best.pt")
    assert best["meta"]["model"]["encoder"]["arch"] == "resnet10"
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["strategy"] == "full" and cfg["train"]["epochs"] == 2
    assert result.monitor == "val_loss" and result.best_epoch in (0, 1)


class _Crash(RuntimeError):
    pass


@pytest.mark.parametrize("name", ["full", "lp_ft"])
def test_resumed_run_equals_uninterrupted_run(tmp_path, name):
    # fp32: bf16 kernels on a CPU sum in a thread-dependent order, so two bf16 runs differ in the last bits
    cfg = dict(epochs=3, deterministic=True, device="cpu", progress=False, restore_best=False, seed=3, amp="off")
    train, val = _loaders()
    ref = _strategy(name)
    fit(ref, train, val, run_dir=tmp_path / "ref", **cfg)

    def crash_after_epoch_1(record):
        if record["epoch"] == 1:
            raise _Crash("killed")

    train, val = _loaders()
    with pytest.raises(_Crash):
        fit(_strategy(name), train, val, run_dir=tmp_path / "run", callbacks=[crash_after_epoch_1], **cfg)
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 2
    train, val = _loaders()
    resumed = _strategy(name)  # a new process would build the model afresh
    result = fit(resumed, train, val, run_dir=tmp_path / "run", **cfg)
    assert [r["epoch"] for r in result.history] == [0, 1, 2]
    ref_sd, res_sd = ref.state_dict(), resumed.state_dict()
    assert ref_sd.keys() == res_sd.keys()
    for k in ref_sd:
        assert torch.equal(ref_sd[k], res_sd[k]), k
    log = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [0, 1, 2]


def test_a_kill_between_best_pt_and_last_pt_never_leaves_a_best_pt_of_another_epoch(tmp_path, monkeypatch):
    """best.pt was written before last.pt: killed between them, the resumed run kept a best.pt of the epoch its
    record had thrown away, and the final model was not the epoch its metadata named. Now best.pt is written
    pending and takes effect with last.pt."""
    from medtl.engine.trainer import Trainer as T

    calls = []
    save_state = T._save_state

    def killed_on_the_third(self, path, state):
        calls.append(state.epoch)
        if len(calls) == 3:  # epoch 2 finished: its best.pt is written, last.pt not yet
            raise _Crash("killed")
        save_state(self, path, state)

    rising = iter(range(100))  # every epoch improves: each writes a best.pt
    cfg = dict(device="cpu", progress=False, seed=3, amp="off", monitor="score", mode="max",
               epoch_metrics=[lambda strategy: {"score": next(rising)}])
    monkeypatch.setattr(T, "_save_state", killed_on_the_third)
    train, val = _loaders()
    with pytest.raises(_Crash):
        fit(_strategy(), train, val, run_dir=tmp_path / "run", epochs=6, **cfg)
    monkeypatch.setattr(T, "_save_state", save_state)
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and last["best"]["epoch"] == 1
    train, val = _loaders()
    resumed = _strategy()
    fit(resumed, train, val, run_dir=tmp_path / "run", epochs=2, **cfg)  # fewer epochs: nothing retrains epoch 2
    best = read_checkpoint(tmp_path / "run" / "best.pt")["state_dict"]
    for k, v in best.items():  # the best epoch (1) is the last one kept: best.pt holds its weights
        assert torch.equal(v, last["model"][k]), k
    assert not list((tmp_path / "run").glob("*.pending"))


def test_a_cut_off_last_log_line_is_left_out_and_a_damaged_key_file_is_named(tmp_path):
    from medtl.engine.pretrain import check_resumable
    from medtl.engine.run_folder import RunFolder

    folder = RunFolder(tmp_path / "run").create()
    folder.append_log({"epoch": 0, "train_loss": 1.0})
    with open(folder.metrics, "a") as f:
        f.write('{"epoch": 1, "train_lo')  # a kill (or a full disk) mid-append
    assert folder.read_log() == [{"epoch": 0, "train_loss": 1.0}]
    folder.truncate_log(1)
    assert folder.metrics.read_text() == '{"epoch": 0, "train_loss": 1.0}\n'
    folder.metrics.write_text('{"epoch": 0\n{"epoch": 1}\n')
    with pytest.raises(MedtlError, match="line 1 is not a JSON record"):
        folder.read_log()
    torch.save({}, folder.last)
    (folder.path / "key.json").write_text("")
    with pytest.raises(MedtlError, match=r"key.json: cannot read this run's settings to check a resume"):
        check_resumable(folder.path, True, {"lr": 1}, "key.json")
    check_resumable(folder.path, False, {"lr": 1}, "key.json")  # starting over writes it afresh
    check_resumable(folder.path, True, {"lr": 1, "name": "medtl-resnet10-mri2d-copy"}, "key.json")  # a copied run
    # another model saved over the --init path: other weights to start from (the path alone had resumed)
    check_resumable(folder.path, True, {"lr": 1, "init_sha256": "a"}, "key.json")  # a key from before: resumes
    with pytest.raises(MedtlError, match="this folder holds a run with other init_sha256"):
        check_resumable(folder.path, True, {"lr": 1, "init_sha256": "b"}, "key.json")
    # a run's config.json cut short: the resume check cannot read it, and says so (it let any settings through)
    train, val = _loaders()
    fit(_strategy(), train, val, run_dir=tmp_path / "short", epochs=1, progress=False, device="cpu")
    (tmp_path / "short" / "config.json").write_text('{"strategy": ')
    (tmp_path / "short" / "best.pt.epoch7.pending.tmp").write_bytes(b"cut")  # a kill mid-write of a pending best
    train, val = _loaders()
    with pytest.raises(MedtlError, match=r"config.json: cannot read this run's settings to check a resume"):
        fit(_strategy(), train, val, run_dir=tmp_path / "short", epochs=2, progress=False, device="cpu")
    RunFolder(tmp_path / "short").settle_best(0)
    assert not list((tmp_path / "short").glob("*.tmp"))
    from medtl.models.checkpoint import save_atomic

    with pytest.raises(MedtlError, match=r"x.pt: cannot write the file \(.*\); the previous version, if any, is kept"):
        save_atomic({}, tmp_path / "no-such-folder" / "x.pt")


def test_a_resume_with_other_settings_is_refused_and_longer_training_is_not(tmp_path):
    """A notebook cell rerun with a new learning rate must not silently continue the old run (and record the
    new rate in config.json); more epochs continue it."""
    cfg = dict(epochs=1, device="cpu", progress=False, amp="off")
    train, val = _loaders()
    fit(_strategy("full", {"lr": 1e-3}), train, val, run_dir=tmp_path, **cfg)
    with pytest.raises(MedtlError, match=r"other settings \(hparams.lr: 0.001 -> 0.01\).*resume=False"):
        fit(_strategy("full", {"lr": 1e-2}), train, val, run_dir=tmp_path, **cfg)
    assert json.loads((tmp_path / "config.json").read_text())["hparams"]["lr"] == 1e-3  # the record stays true
    with pytest.raises(MedtlError, match=r"train.optimizer: 'adamw' -> 'sgd'"):
        fit(_strategy("full", {"lr": 1e-3}), train, val, run_dir=tmp_path, **{**cfg, "optimizer": "sgd"})
    result = fit(_strategy("full", {"lr": 1e-3}), train, val, run_dir=tmp_path, **{**cfg, "epochs": 2})
    assert [r["epoch"] for r in result.history] == [0, 1]
    fresh = fit(_strategy("full", {"lr": 1e-2}), train, val, run_dir=tmp_path, resume=False, **cfg)
    assert [r["epoch"] for r in fresh.history] == [0]
    assert json.loads((tmp_path / "config.json").read_text())["hparams"]["lr"] == 1e-2


def test_a_resume_accepts_an_older_record_and_the_same_settings_written_another_way(tmp_path):
    """A run folder from an older medtl lacks settings added since (resumed when they are at their defaults);
    an infinite grad_clip is recorded as null and 1 equals 1.0: none of these is a change."""
    cfg = dict(epochs=1, device="cpu", progress=False, amp="off", grad_clip=float("inf"))
    train, val = _loaders()
    fit(_strategy("full", {"lr": 1e-3}), train, val, run_dir=tmp_path, **cfg)
    record = json.loads((tmp_path / "config.json").read_text())
    del record["train"]["sync_batchnorm"]  # as written before that option existed
    (tmp_path / "config.json").write_text(json.dumps(record))
    result = fit(_strategy("full", {"lr": 1e-3}), train, val, run_dir=tmp_path, **{**cfg, "epochs": 2})
    assert [r["epoch"] for r in result.history] == [0, 1]
    assert fit(_strategy("full", {"lr": 1}), train, val, run_dir=tmp_path / "b", **cfg).history
    assert len(fit(_strategy("full", {"lr": 1.0}), train, val, run_dir=tmp_path / "b",
                   **{**cfg, "epochs": 2}).history) == 2
    (tmp_path / "config.json").write_text(json.dumps(record))  # absent again, but now asked for: a change
    with pytest.raises(MedtlError, match=r"train.sync_batchnorm: None -> True"):
        fit(_strategy("full", {"lr": 1e-3}), train, val, run_dir=tmp_path, **{**cfg, "epochs": 3,
                                                                              "sync_batchnorm": True})


def test_early_stopping_and_restore_best(tmp_path):
    train, val = _loaders()
    s = _strategy("full", {"lr": 0.0})  # nothing can improve after the first epoch
    result = fit(s, train, val, epochs=10, patience=2, progress=False, device="cpu", monitor="val_accuracy")
    assert result.stopped_early and len(result.history) == 3 and result.best_epoch == 0


def test_stop_training_from_a_callback(tmp_path):
    train, _ = _loaders()

    def stop(record):
        raise StopTraining

    result = fit(_strategy(), train, None, epochs=5, progress=False, device="cpu", callbacks=[stop])
    assert len(result.history) == 1 and result.monitor == "train_loss"


def test_gradient_clipping_bounds_the_update():
    train, _ = _loaders()
    s = _strategy("full", {"weight_decay": 0.0})
    before = torch.cat([p.detach().flatten().clone() for p in s.parameters()])
    fit(s, train, None, epochs=1, optimizer="sgd", momentum=0.0, scheduler="constant", grad_clip=1e-3,
        max_steps_per_epoch=1, progress=False, device="cpu", restore_best=False)
    after = torch.cat([p.detach().flatten() for p in s.parameters()])
    assert (after - before).norm() <= 1e-3 * 1e-3 * (1 + 1e-4)  # lr 1e-3 * clipped norm 1e-3


class _CountingDA(Strategy):
    name = "counting_da"
    needs_target = True

    def __init__(self, encoder, head):
        super().__init__(encoder, head)
        self.targets = []

    def training_loss(self, batch, target, progress):
        self.targets.append(target["case_id"])
        loss, _ = self.supervised_loss(batch)
        return loss, {}


def test_target_batches_cycle_for_adaptation_strategies():
    enc = build_encoder("resnet10")
    s = _CountingDA(enc, Head(512))
    train = DataLoader(TinyImages(8), batch_size=2)
    target = DataLoader(TinyImages(2, seed=5), batch_size=1)  # shorter than the source loader: cycled
    fit(s, train, None, target_loader=target, epochs=1, progress=False, device="cpu")
    assert s.targets == [["case0"], ["case1"], ["case0"], ["case1"]]
    with pytest.raises(MedtlError, match="target_loader"):
        fit(_CountingDA(enc, Head(512)), train, None, epochs=1, progress=False, device="cpu")


class _SometimesLogged(Strategy):
    """Logs a part on the first step only, as a target loss is logged only on steps with labelled target rows."""

    name = "sometimes_logged"

    def __init__(self, encoder, head):
        super().__init__(encoder, head)
        self.steps = 0

    def training_loss(self, batch, target, progress):
        loss, _ = self.supervised_loss(batch)
        self.steps += 1
        return loss, ({"rare": 3.0} if self.steps == 1 else {})


def test_a_part_logged_on_some_steps_is_averaged_over_those_steps(tmp_path):
    """It was divided by every item of the epoch: a target loss of 1.39 on the one step with labelled target
    rows was logged as 0.46 over three steps."""
    enc = build_encoder("resnet10")
    fit(_SometimesLogged(enc, Head(512)), DataLoader(TinyImages(8), batch_size=2), None, epochs=1, progress=False,
        device="cpu", run_dir=tmp_path / "run")
    (record,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert record["train_rare"] == pytest.approx(3.0) and np.isfinite(record["train_loss"])


def test_non_finite_loss_is_a_clear_error():
    train, _ = _loaders()
    s = _strategy("full", {"lr": 1e30})
    with pytest.raises(MedtlError, match="loss is"):
        fit(s, train, None, epochs=3, progress=False, device="cpu", optimizer="sgd")


def test_config_validation_and_amp_choice():
    with pytest.raises(MedtlError, match="unknown training option"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(MedtlError, match="amp"):
        TrainConfig.from_dict({"amp": "fp8"})
    with pytest.raises(MedtlError, match="CUDA"):
        if torch.cuda.is_available():
            raise MedtlError("CUDA skipped: a GPU is present")
        Trainer(_strategy(), {"device": "cuda"})
    cpu = torch.device("cpu")
    assert amp_dtype("auto", cpu) is None  # bf16 on a CPU collapses beside other work (docs/performance.md)
    assert amp_dtype("bf16", cpu) == torch.bfloat16


def test_evaluate_matches_a_direct_computation():
    from sklearn.metrics import roc_auc_score

    s = _strategy().eval()
    data = TinyImages(8)
    x = data.images
    det = [{"image": data.images[i], "label": data.labels[i]} for i in range(8)]  # no noise
    metrics = evaluate(s, DataLoader(det, batch_size=3))
    with torch.no_grad():
        probs = s(x).softmax(1)[:, 1].numpy()
    assert metrics["auroc"] == pytest.approx(roc_auc_score(data.labels.numpy(), probs))
    assert metrics["accuracy"] == pytest.approx(float(((probs > 0.5) == data.labels.numpy().astype(bool)).mean()))
    assert np.isfinite(metrics["loss"])


def test_epoch_end_handlers_run_in_order_and_decide_as_documented():
    from medtl.engine.trainer import BestCheckpoint, CallbackRunner, EarlyStopping, LastCheckpoint, MetricLogger

    trainer = Trainer(_strategy(), {"device": "cpu", "patience": 2})
    kinds = [type(h) for h in trainer.handlers("val_loss", "min")]
    assert kinds == [BestCheckpoint, MetricLogger, LastCheckpoint, EarlyStopping, CallbackRunner]
    lower = BestCheckpoint("val_loss", "min", 0.1, keep_in_memory=False)
    assert lower.improved(1.0, None) and lower.improved(0.8, 1.0)
    assert not lower.improved(0.95, 1.0)  # within min_delta
    assert not lower.improved(float("nan"), None) and not lower.improved(None, None)
    assert BestCheckpoint("val_auroc", "max", 0.0, False).improved(0.9, 0.8)


def test_the_optimiser_uses_each_strategys_own_weight_decay(tmp_path):
    """AdamW's own default (0.01) must never stand in for a strategy's weight_decay (the autoencoder's
    groups once had none, so it trained at 100 times its 1e-4)."""
    from medtl.models.autoencoder import VAEHead
    from medtl.strategies.autoencoder import AutoencoderStrategy

    enc = build_encoder("resnet10")
    auto = AutoencoderStrategy(enc, VAEHead(enc.out_features, 16, 2, 1, 8), {"weight_decay": 3e-4})
    for strategy, expected in ((auto, 3e-4), (_strategy("full", {"weight_decay": 2e-4}), 2e-4),
                               (_strategy("l2sp"), 0.0)):
        for optimizer in ("adamw", "sgd"):
            trainer = Trainer(strategy, TrainConfig(epochs=1, optimizer=optimizer, progress=False, device="cpu"),
                              tmp_path / f"{strategy.name}-{optimizer}")
            opt = trainer._optimizer(trainer._groups())
            assert [g["weight_decay"] for g in opt.param_groups] == [expected] * len(opt.param_groups)
