"""MoCo v2 self-supervised pretraining: the loss against numpy, the strategy's mechanics, pretrain runs."""

import math

import numpy as np
import pytest
import torch

from medtl.data.views import TwoViews, ViewsDataset, view_chain
from medtl.engine import pretrain_on
from medtl.errors import MedtlError
from medtl.models import build_encoder, load_checkpoint, load_weights
from medtl.models.projection import ProjectionHead
from medtl.strategies.ssl import InfoNCELoss, MoCoStrategy

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _info_nce_numpy(q, k, neg, t):
    """InfoNCE written out: -log(exp(q.k/t) / (exp(q.k/t) + sum_n exp(q.n/t))), unit vectors, batch mean."""
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    q, k, neg = unit(q.astype(np.float64)), unit(k.astype(np.float64)), unit(neg.astype(np.float64))
    losses = []
    for i in range(len(q)):
        pos = np.exp(q[i] @ k[i] / t)
        negs = np.exp(neg @ q[i] / t).sum()
        losses.append(-np.log(pos / (pos + negs)))
    return float(np.mean(losses))


@pytest.mark.parametrize("t", [0.07, 0.2, 1.0])
def test_info_nce_matches_a_numpy_reference(t):
    rng = np.random.default_rng(0)
    q, k, neg = rng.normal(size=(6, 16)), rng.normal(size=(6, 16)), rng.normal(size=(20, 16))
    got = InfoNCELoss(t)(torch.tensor(q), torch.tensor(k), torch.tensor(neg))
    assert float(got) == pytest.approx(_info_nce_numpy(q, k, neg, t), rel=1e-5)


def test_info_nce_of_aligned_well_separated_pairs_nears_its_lower_bound():
    # q = k = e_i and negatives orthogonal to every query: loss = log(1 + K exp(-1/t)), which -> 0 (its
    # infimum) as t -> 0; a random pairing sits near log(1 + K), the loss of knowing nothing
    eye = torch.eye(16)
    q, neg = eye[:4], eye[8:]
    loss = InfoNCELoss(0.1)
    assert float(loss(q, q, neg)) == pytest.approx(math.log(1 + 8 * math.exp(-1 / 0.1)), rel=2e-2)  # float32
    assert float(loss(q, q, neg)) < 1e-3 and float(InfoNCELoss(0.02)(q, q, neg)) < 1e-6
    assert float(loss(q, eye[4:8], neg)) == pytest.approx(math.log(1 + 8), rel=1e-4)  # positive as far as a negative
    with pytest.raises(MedtlError, match="temperature"):
        InfoNCELoss(0.0)


def _strategy(dims=2, **hp):
    enc = build_encoder("resnet10", spatial_dims=dims)
    return MoCoStrategy(enc, ProjectionHead(enc.out_features, 32, 8), {"queue_size": 16, **hp})


def _batch(n=6, size=16, dims=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (n, 1) + (size,) * dims
    return {"image": torch.randn(*shape, generator=g), "image_2": torch.randn(*shape, generator=g)}


def test_key_network_moves_by_momentum_and_only_the_query_network_trains():
    s = _strategy(momentum=0.9)
    with torch.no_grad():  # make the two networks differ so the update is visible
        for p in s.encoder.parameters():
            p.add_(0.1)
    online = [p.detach().clone() for p in s.encoder.parameters()]
    keys0 = [p.detach().clone() for p in s.key_encoder.parameters()]
    s.train()
    loss, parts = s.training_loss(_batch(), None, 0.0)
    m = s.momentum_at(0.0)
    assert m == pytest.approx(0.9) and parts["momentum"] == pytest.approx(0.9)
    for p, k0, q0 in zip(s.key_encoder.parameters(), keys0, online):
        assert torch.allclose(p, m * k0 + (1 - m) * q0, atol=1e-6)
    loss.backward()
    assert all(p.grad is None for p in s.key_encoder.parameters())
    assert s.encoder.conv1.weight.grad is not None and s.encoder.conv1.weight.grad.abs().sum() > 0
    trained = {id(p) for g in s.param_groups() for p in g["params"]}
    assert trained == {id(p) for p in (*s.encoder.parameters(), *s.head.parameters())}
    assert s.momentum_at(1.0) == pytest.approx(1.0) and 0.9 < s.momentum_at(0.5) < 1.0


def test_queue_takes_both_views_keys_and_wraps_around():
    s = _strategy()
    s.train()
    before = s.queue.clone()
    s.training_loss(_batch(6), None, 0.0)  # 2 x 6 keys into a queue of 16
    assert int(s.queue_ptr) == 12 and torch.equal(s.queue[12:], before[12:]) and not torch.equal(s.queue[:12], before[:12])
    assert torch.allclose(s.queue.norm(dim=1), torch.ones(16), atol=1e-5)
    s.training_loss(_batch(6, seed=1), None, 0.1)
    assert int(s.queue_ptr) == (24 % 16)


def test_shuffled_key_groups_give_the_keys_of_the_unshuffled_batch():
    s = _strategy(key_groups=3).eval()  # eval: batch norm uses running statistics, so grouping cannot matter
    x = _batch(6)["image"]
    expected = torch.nn.functional.normalize(s.key_head(s.key_encoder(x)), dim=1)
    assert torch.allclose(s.keys(x), expected, atol=1e-5)


def test_odd_batches_split_into_key_groups_of_at_least_two():
    s = _strategy(key_groups=3).train()  # 7 = 3 + 2 + 2; a part of one would break the projector's batch norm
    loss, _ = s.training_loss(_batch(7), None, 0.0)
    assert torch.isfinite(loss)


def test_moco_refuses_single_view_batches():
    s = _strategy()
    with pytest.raises(MedtlError, match="two views"):
        s.training_loss({"image": torch.randn(4, 1, 16, 16)}, None, 0.0)


def test_three_d_works_with_the_same_code():
    s = _strategy(dims=3)
    s.train()
    loss, _ = s.training_loss(_batch(4, size=16, dims=3), None, 0.0)
    loss.backward()
    assert torch.isfinite(loss) and s.encoder.conv1.weight.grad.abs().sum() > 0
    assert s.queue.shape == (16, 8) and int(s.queue_ptr) == 8


def _views(n=8, size=16, dims=2):
    g = torch.Generator().manual_seed(1)
    base = [{"image": torch.randn(1, *(size,) * dims, generator=g), "case_id": f"c{i}"} for i in range(n)]
    return ViewsDataset(base, TwoViews(view_chain("cxr" if dims == 2 else "mri3d", size)))


def _run(out, epochs, dims=2, size=16):
    return pretrain_on(_views(dims=dims, size=size), None, out, mode="moco", arch="resnet10", spatial_dims=dims,
                       image_size=size, epochs=epochs, batch_size=4, proj_dim=8, proj_hidden=32, seed=3,
                       progress=False, device="cpu", deterministic=True, ssl_hparams={"queue_size": 16})


def test_pretraining_writes_a_model_whose_encoder_loads_into_a_fresh_one(tmp_path):
    result = _run(tmp_path, 1)
    raw = torch.load(result.path, weights_only=True)
    meta = raw["meta"]
    assert meta["mode"] == "moco" and meta["model"]["head"]["kind"] == "projection"
    assert meta["hparams"]["queue_size"] == 16 and "train_positive_cos" in meta["metrics"]
    assert not any(k.startswith(("key_", "queue")) for k in raw["state_dict"])  # training state stays in last.pt
    model, _ = load_checkpoint(result.path)  # the whole model rebuilds (projection head included)
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 8)
    fresh = build_encoder("resnet10")
    report = load_weights(fresh, result.path)
    assert report.ok and all(k.startswith("head.") for k in report.ignored) and report.ignored
    for name, p in fresh.state_dict().items():
        assert torch.equal(p, raw["state_dict"][f"encoder.{name}"])


def test_resume_continues_from_the_last_epoch_and_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    whole = _run(tmp_path / "whole", 2)

    def killed(self, epoch, total):  # the process dies as epoch 1 starts, after epoch 0's last.pt
        if epoch == 1:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(MoCoStrategy, "on_epoch_start", killed)
        with pytest.raises(KeyboardInterrupt):
            _run(tmp_path / "split", 2)
    assert len((tmp_path / "split" / "metrics.jsonl").read_text().splitlines()) == 1
    resumed = _run(tmp_path / "split", 2)  # the same command again: continues after epoch 0 from last.pt
    assert [r["epoch"] for r in resumed.train.history] == [0, 1]
    assert len((tmp_path / "split" / "metrics.jsonl").read_text().splitlines()) == 2
    a = torch.load(whole.path, weights_only=True)["state_dict"]
    b = torch.load(resumed.path, weights_only=True)["state_dict"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    # the queue and the key network came back too (last.pt holds the strategy's whole state)
    state = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert "queue" in state["model"] and any(k.startswith("key_encoder.") for k in state["model"])


def test_three_d_pretraining_run(tmp_path):
    result = _run(tmp_path, 1, dims=3, size=16)
    fresh = build_encoder("resnet10", spatial_dims=3)
    assert load_weights(fresh, result.path).ok


@pytest.mark.real_data
def test_cli_moco_on_several_real_manifests_gives_an_init_for_medtl_train(tmp_path, data_root, manifests_dir):
    from medtl.cli import main
    from medtl.pipeline.train import _init_defaults

    out = tmp_path / "ssl"
    status = main(["pretrain", "--mode", "moco", "--manifest", str(manifests_dir / "cxr_kermany.csv"),
                   str(manifests_dir / "cxr_actualmed.csv"), "--splits", "train", "val", "test", "--data-root",
                   str(data_root), "--out", str(out), "--arch", "resnet10", "--image-size", "32", "--epochs", "1",
                   "--batch-size", "16", "--queue-size", "64", "--device", "cpu", "--no-progress"])
    assert status == 0
    meta = torch.load(out / "model.pt", weights_only=True)["meta"]
    assert meta["mode"] == "moco" and meta["hparams"]["queue_size"] == 64
    assert [p["items"] for p in meta["ssl_data"]] == [16, 54] and meta["intensity"]["preset"] == "cxr"
    assert meta["domains"] == ["cxr_actualmed", "cxr_kermany"]
    # what medtl train --init reads from it, and the encoder it loads
    assert _init_defaults(out / "model.pt") == {"arch": "resnet10", "stem_stride": 2, "image_size": 32,
                                                "spatial_dims": 2}
    assert load_weights(build_encoder("resnet10"), out / "model.pt").ok
    with pytest.raises(SystemExit):
        main(["pretrain", "--mode", "moco", "--manifest", "x.csv", "--out", str(out), "--splits", "holdout"])


def test_the_stale_key_share_agrees_with_a_simulation_of_the_loader_and_the_queue():
    """A review measured 33% of queries meeting a stale key of their own image at the longest queue the earlier
    warning allowed (43 images, batch 16, queue 54): the share is never zero across epochs. The formula against a
    simulation: shuffled epochs, the loader's drop-last rule, both views queued after each batch."""
    import numpy as np

    from medtl.engine.pretrain import stale_key_share

    def simulated(n, batch, queue, steps=None, epochs=60, seed=0):
        rng, keys, hits, queries = np.random.default_rng(seed), [], 0, 0
        last = n % batch
        drop = n > batch and 0 < last < 2
        for epoch in range(epochs):
            order = rng.permutation(n)
            batches = [order[i:i + batch] for i in range(0, n, batch)]
            batches = batches[:-1] if drop else batches
            for b in batches[:steps] if steps else batches:
                if epoch > 0:
                    held = set(keys[-queue:]) if queue else set()
                    hits += sum(int(i) in held for i in b)
                    queries += len(b)
                keys += [int(i) for i in b] * 2  # both views of each image
        return hits / queries

    assert abs(stale_key_share(43, 16, 54) - 0.329) < 0.001  # the review's case, by hand: (16*27 + 16*11) / 43^2
    for n, batch, queue, steps in ((43, 16, 54, None), (83, 16, 64, None), (70, 16, 200, 1), (200, 32, 128, None),
                                   (4000, 64, 1024, None)):
        assert abs(stale_key_share(n, batch, queue, steps_per_epoch=steps) - simulated(n, batch, queue, steps)) < 0.02


def test_a_queue_that_holds_stale_keys_of_the_querys_own_image_is_warned_about(tmp_path, data_root, manifests_dir,
                                                                              caplog):
    """70 images, batch 16, one step an epoch: 16 images an epoch, so a queue of 200 keys holds the last 100 images,
    about six epochs', and about 80% of queries meet their own image's stale key; at most 6 keys keep it under 5%."""
    from medtl.cli import main

    args = ["pretrain", "--mode", "moco", "--manifest", str(manifests_dir / "cxr_kermany.csv"),
            str(manifests_dir / "cxr_actualmed.csv"), "--splits", "train", "val", "test", "--data-root",
            str(data_root), "--arch", "resnet10", "--image-size", "32", "--epochs", "2", "--batch-size", "16",
            "--device", "cpu", "--no-progress", "--max-steps-per-epoch", "1"]
    with caplog.at_level("WARNING"):
        assert main(args + ["--out", str(tmp_path / "long"), "--queue-size", "200"]) == 0
    assert "about 80% of the queries (once the queue has filled) meet a stale key of their own image" in caplog.text
    assert "of at most 6 keeps it under 5%" in caplog.text and "more images or a smaller batch" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert main(args + ["--out", str(tmp_path / "short"), "--queue-size", "6"]) == 0
    assert "stale key" not in caplog.text


def test_moco_refuses_a_batch_of_one_image_in_one_process(tmp_path, data_root, manifests_dir, capsys):
    """A review: --batch-size 1 crashed with a raw ValueError from the projection head's batch norm (the check was
    made for several processes only)."""
    from medtl.cli import main

    code = main(["pretrain", "--mode", "moco", "--manifest", str(manifests_dir / "cxr_actualmed.csv"),
                 "--data-root", str(data_root), "--arch", "resnet10", "--image-size", "32", "--epochs", "1",
                 "--batch-size", "1", "--device", "cpu", "--no-progress", "--out", str(tmp_path / "one")])
    assert code == 2 and "cannot do on a single image; give at least 2 images per process" in capsys.readouterr().err




def test_a_moco_model_records_the_epoch_and_losses_of_the_weights_it_holds(tmp_path, data_root, manifests_dir):
    """A review: model.pt held the last epoch's weights (as documented) while its meta and the printed summary gave
    best_epoch 0 and epoch 0's losses."""
    from medtl.data.manifest import Manifest
    from medtl.engine.pretrain import pretrain
    from medtl.engine.run_folder import RunFolder

    manifest = Manifest.load(manifests_dir / "cxr_actualmed.csv")
    result = pretrain(manifest, data_root, tmp_path / "moco", mode="moco", arch="resnet10", image_size=32, epochs=3,
                      batch_size=16, seed=0, device="cpu", progress=False, max_steps_per_epoch=2,
                      ssl_hparams={"queue_size": 16})
    meta = torch.load(result.path, weights_only=True)["meta"]
    log = RunFolder.read_log_file(tmp_path / "moco" / "metrics.jsonl")
    assert meta["last_epoch"] == log[-1]["epoch"] == 2 and "best_epoch" not in meta
    assert meta["metrics"]["train_loss"] == pytest.approx(log[-1]["train_loss"])
    assert result.metrics == meta["metrics"]
