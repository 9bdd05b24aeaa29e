"""Weight loading, with state dicts built under the key names the source projects use."""

import pickle

import pytest
import torch

from medtl.errors import MedtlError
from medtl.models import Head, Model, build_encoder, lift, load_weights, save_checkpoint
from medtl.models.weights import detect_source, map_keys


def torchvision_resnet_keys(layers=(2, 2, 2, 2), bottleneck=False):
    """The names of torchvision's / timm's ResNet state dict, written out from their convention."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = ["conv1.weight"] + [f"bn1.{b}" for b in bn]
    convs = 3 if bottleneck else 2
    for i, n in enumerate(layers, start=1):
        for j in range(n):
            p = f"layer{i}.{j}"
            for c in range(1, convs + 1):
                keys += [f"{p}.conv{c}.weight"] + [f"{p}.bn{c}.{b}" for b in bn]
            if j == 0 and (i > 1 or bottleneck):
                keys += [f"{p}.downsample.0.weight"] + [f"{p}.downsample.1.{b}" for b in bn]
    return keys + ["fc.weight", "fc.bias"]


def torchvision_densenet121_keys(legacy=False):
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = ["features.conv0.weight"] + [f"features.norm0.{b}" for b in bn]
    for b, n in enumerate((6, 12, 24, 16), start=1):
        for j in range(1, n + 1):
            p = f"features.denseblock{b}.denselayer{j}"
            for i in (1, 2):
                norm, conv = (f"norm.{i}", f"conv.{i}") if legacy else (f"norm{i}", f"conv{i}")
                keys += [f"{p}.{norm}.{x}" for x in bn] + [f"{p}.{conv}.weight"]
        if b < 4:
            keys += [f"features.transition{b}.norm.{x}" for x in bn] + [f"features.transition{b}.conv.weight"]
    return keys + [f"features.norm5.{x}" for x in bn] + ["classifier.weight", "classifier.bias"]


def _fill(keys, shapes_from: dict, rename=lambda k: k, head_shapes=None):
    """A state dict with these keys; shapes from the medtl encoder's tensor of the mapped name."""
    out = {}
    for k in keys:
        if head_shapes and k in head_shapes:
            out[k] = torch.randn(head_shapes[k])
        else:
            ref = shapes_from[rename(k)]
            out[k] = torch.randint(0, 5, ()) if ref.dtype == torch.long else torch.randn(ref.shape)
    return out


def _dense_name(k):
    return next(iter(map_keys({k: None}, "densenet")))  # the loader's own renaming (torchvision -> MONAI)


def test_torchvision_resnet_state_dict_loads_by_name(tmp_path):
    enc = build_encoder("resnet18")
    sd = _fill(torchvision_resnet_keys(), enc.state_dict(), head_shapes={"fc.weight": (1000, 512), "fc.bias": (1000,)})
    sd["conv1.weight"] = torch.randn(64, 1, 7, 7)
    torch.save(sd, tmp_path / "tv.pth")
    assert detect_source(sd) == "resnet"
    report = load_weights(enc, tmp_path / "tv.pth")
    assert report.ok and report.source == "resnet" and sorted(report.ignored) == ["fc.bias", "fc.weight"]
    assert torch.equal(enc.layer3[0].downsample[0].weight, sd["layer3.0.downsample.0.weight"])
    assert torch.equal(enc.bn1.running_var, sd["bn1.running_var"])


def test_resnet50_names_match_too():
    enc = build_encoder("resnet50")
    assert set(torchvision_resnet_keys((3, 4, 6, 3), bottleneck=True)) - {"fc.weight", "fc.bias"} == set(enc.state_dict())


@pytest.mark.parametrize("legacy", [False, True])
def test_torchvision_densenet_state_dict_loads(tmp_path, legacy):
    enc = build_encoder("densenet121")
    sd = _fill(torchvision_densenet121_keys(legacy), enc.state_dict(), _dense_name,
               {"classifier.weight": (1000, 1024), "classifier.bias": (1000,)})
    sd["features.conv0.weight"] = torch.randn(64, 1, 7, 7)
    if legacy:  # old torchvision files carry no BatchNorm counters
        sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "dn.pth")
    report = load_weights(enc, tmp_path / "dn.pth")
    assert report.source == "densenet" and report.loaded == len(sd) - 2
    assert bool(report.defaulted) == legacy
    k = "features.denseblock2.denselayer3.norm.2.weight" if legacy else "features.denseblock2.denselayer3.norm2.weight"
    assert torch.equal(enc.features.denseblock2.denselayer3.layers.norm2.weight, sd[k])


def test_torchxrayvision_densenet(tmp_path):
    enc = build_encoder("densenet121")
    sd = _fill(torchvision_densenet121_keys(), enc.state_dict(), _dense_name,
               {"classifier.weight": (18, 1024), "classifier.bias": (18,)})
    sd["features.conv0.weight"] = torch.randn(64, 1, 7, 7)  # xrv models take one channel
    sd["op_threshs"] = torch.rand(18)
    torch.save(sd, tmp_path / "xrv.pt")
    report = load_weights(enc, tmp_path / "xrv.pt")
    assert report.source == "torchxrayvision" and "op_threshs" in report.ignored
    assert torch.equal(enc.features.conv0.weight, sd["features.conv0.weight"])


class _Payload:
    """Unpickling this would call a function: the shape of a malicious 'weights' file (harmless here)."""

    def __reduce__(self):
        return (print, ("this would run on load",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_whole_model_pickle_and_code_are_refused_by_name(tmp_path):
    path = tmp_path / "xrv-whole-model.pt"
    torch.save(torch.nn.Linear(2, 2), path)  # like TorchXRayVision's released files: a pickled module
    with pytest.raises(MedtlError, match="pickled Python objects") as err:
        load_weights(build_encoder("resnet10"), path)
    assert err.value.where == str(path) and "\x1b" not in str(err.value)  # torch's bold escapes stay out
    path2 = tmp_path / "evil.pt"
    torch.save({"conv1.weight": torch.zeros(1), "x": _Payload()}, path2)
    with pytest.raises(MedtlError, match="pickled Python objects") as err:
        load_weights(build_encoder("resnet10"), path2)
    # the blocked global is named (torch's first line alone said loading without weights_only "will likely succeed")
    assert str(path2) in str(err.value) and "it would import" in str(err.value) and "print" in str(err.value)
    assert "likely succeed" not in str(err.value)
    path3 = tmp_path / "raw.pkl"
    path3.write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(MedtlError) as err:
        load_weights(build_encoder("resnet10"), path3)
    assert str(path3) in str(err.value)


def test_a_text_or_csv_file_as_weights_is_named_for_what_it_is(tmp_path):
    for name, content in (("junk.pt", b"hello\n"), ("manifest.pt", b"path,label\na.png,x\n")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(MedtlError, match="not a PyTorch weights file") as err:
            load_weights(build_encoder("resnet10"), tmp_path / name)
        assert str(tmp_path / name) in str(err.value) and "pickled" not in str(err.value)


@pytest.mark.parametrize("depth, shortcut", [(10, "B"), (18, "A")])
def test_medicalnet_3d_resnet(tmp_path, depth, shortcut):
    enc = build_encoder(f"resnet{depth}", spatial_dims=3, shortcut=shortcut)
    layers = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2)}[depth]
    keys = [k for k in torchvision_resnet_keys(layers) if not k.startswith("fc.")]
    if shortcut == "A":  # MedicalNet's type-A shortcut has no parameters
        keys = [k for k in keys if ".downsample." not in k]
    sd = {f"module.{k}": v for k, v in _fill(keys, enc.state_dict()).items()}
    sd["module.conv_seg.0.weight"] = torch.randn(32, 512, 3, 3, 3)  # segmentation head
    torch.save({"state_dict": sd}, tmp_path / f"resnet_{depth}.pth")
    report = load_weights(enc, tmp_path / f"resnet_{depth}.pth")
    assert report.source == "medicalnet" and report.ignored == ["conv_seg.0.weight"]
    assert torch.equal(enc.conv1.weight, sd["module.conv1.weight"]) and enc.conv1.weight.shape == (64, 1, 7, 7, 7)
    if shortcut == "A":  # the wrong shortcut type is named in the error
        with pytest.raises(MedtlError, match="shortcut='A'"):
            load_weights(build_encoder("resnet18", spatial_dims=3, shortcut="B"), tmp_path / "resnet_18.pth")


def test_every_bad_key_is_reported_and_fails_unless_allowed(tmp_path):
    enc = build_encoder("resnet10")
    sd = {k: v.clone() for k, v in enc.state_dict().items()}
    del sd["layer4.0.bn2.bias"]
    sd["layer2.0.conv1.weight"] = torch.randn(128, 64, 5, 5)
    sd["extra.weight"] = torch.randn(3)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(MedtlError) as err:
        load_weights(build_encoder("resnet10"), tmp_path / "bad.pth")
    msg = str(err.value)
    assert "layer4.0.bn2.bias" in msg and "layer2.0.conv1.weight" in msg and "extra.weight" in msg
    rep = err.value.report
    assert rep.missing == ["layer4.0.bn2.bias"] and rep.unexpected == ["extra.weight"]
    assert rep.mismatched == [("layer2.0.conv1.weight", (128, 64, 5, 5), (128, 64, 3, 3))]
    report = load_weights(build_encoder("resnet10"), tmp_path / "bad.pth",
                          allow=["layer4.0.bn2.bias", "layer2.0.conv1.*", "extra.*"])
    assert sorted(report.allowed) == ["extra.weight", "layer2.0.conv1.weight", "layer4.0.bn2.bias"]


def test_channel_mismatch(tmp_path):
    rgb = build_encoder("resnet10", in_channels=3)
    torch.save(rgb.state_dict(), tmp_path / "rgb.pth")
    grey = build_encoder("resnet10", in_channels=1)
    with pytest.raises(MedtlError, match="3-channel images but the model takes 1"):
        load_weights(grey, tmp_path / "rgb.pth")
    report = load_weights(grey, tmp_path / "rgb.pth", adapt_channels="sum")
    assert report.adapted
    torch.testing.assert_close(grey.conv1.weight, rgb.conv1.weight.sum(1, keepdim=True))
    # Summed kernels on a grey image = the RGB network on that image repeated over 3 channels.
    grey.eval(), rgb.eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(grey(x), rgb(x.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-5)


def test_not_a_state_dict_and_missing_file(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(MedtlError, match="not a state dict"):
        load_weights(build_encoder("resnet10"), tmp_path / "list.pt")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "dict.pt")
    with pytest.raises(MedtlError, match="not a state dict"):
        load_weights(build_encoder("resnet10"), tmp_path / "dict.pt")
    with pytest.raises(MedtlError, match="not found"):
        load_weights(build_encoder("resnet10"), tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file at all")
    with pytest.raises(MedtlError):
        load_weights(build_encoder("resnet10"), tmp_path / "junk.pt")
    torch.save({"a.b": torch.zeros(1)}, tmp_path / "odd.pt")
    with pytest.raises(MedtlError, match="cannot tell"):
        load_weights(build_encoder("resnet10"), tmp_path / "odd.pt")


def test_lifted_targets(tmp_path):
    enc2 = build_encoder("resnet10")
    torch.save(enc2.state_dict(), tmp_path / "2d.pth")
    # ACS reuses 2D weights as they are.
    a = lift(build_encoder("resnet10"), "acs")
    assert load_weights(a, tmp_path / "2d.pth").ok and torch.equal(a.conv1.weight, enc2.conv1.weight)
    # 2.5D loads them into its slice encoder.
    s = lift(build_encoder("resnet10"), "2.5d", aggregate="attention")
    load_weights(s, tmp_path / "2d.pth")
    assert torch.equal(s.encoder.conv1.weight, enc2.conv1.weight)
    # I3D: load into the 2D encoder first, then inflate; the error says so.
    with pytest.raises(MedtlError, match="then lift"):
        load_weights(lift(build_encoder("resnet10"), "i3d"), tmp_path / "2d.pth")
    # 3D weights into a 2D encoder.
    torch.save(build_encoder("resnet10", spatial_dims=3).state_dict(), tmp_path / "3d.pth")
    with pytest.raises(MedtlError, match="spatial_dims=3"):
        load_weights(enc2, tmp_path / "3d.pth")


def test_medtl_checkpoint_into_encoder_and_into_model_with_new_head(tmp_path):
    enc = build_encoder("resnet10")
    path = save_checkpoint(tmp_path / "model.pt", Model(enc, Head(512, "binary")), label_names=["a", "b"])
    fresh = build_encoder("resnet10")
    report = load_weights(fresh, path)
    assert report.source == "medtl" and "head.fc.weight" in report.ignored
    assert torch.equal(fresh.layer1[0].conv1.weight, enc.layer1[0].conv1.weight)
    target = Model(build_encoder("resnet10"), Head(512, "multiclass", 4))
    with pytest.raises(MedtlError, match="head.fc.weight"):
        load_weights(target, path)
    report = load_weights(target, path, allow=["head.*"])
    assert sorted(report.allowed) == ["head.fc.bias", "head.fc.weight"]
    # Plain source weights into a model: the encoder part loads, the new head must be allowed.
    torch.save(enc.state_dict(), tmp_path / "plain.pth")
    report = load_weights(Model(build_encoder("resnet10"), Head(512)), tmp_path / "plain.pth", allow=["head.*"])
    assert report.ok and report.loaded == len(enc.state_dict())


def test_2d_weights_load_into_a_full_model_whose_encoder_is_2_5d(tmp_path):
    """docs/models.md: a 2.5D encoder loads 2D weights into its slice encoder, in a full model too."""
    torch.manual_seed(0)
    enc2d = build_encoder("resnet10")
    ck = save_checkpoint(tmp_path / "m.pt", Model(enc2d, Head(enc2d.out_features, "binary", 2)))
    enc25 = lift(build_encoder("resnet10"), "2.5d")
    model = Model(enc25, Head(enc25.out_features, "binary", 2))
    assert load_weights(model, ck).ok
    assert torch.equal(model.encoder.encoder.conv1.weight, enc2d.conv1.weight)
    torch.save(enc2d.state_dict(), tmp_path / "bare.pt")
    assert load_weights(lift(build_encoder("resnet10"), "2.5d"), tmp_path / "bare.pt").ok  # the encoder alone


def test_the_shortcut_hint_only_when_only_shortcuts_differ(tmp_path):
    torch.save(build_encoder("resnet18").state_dict(), tmp_path / "r18.pt")
    torch.save(build_encoder("resnet10").state_dict(), tmp_path / "r10.pt")
    with pytest.raises(MedtlError) as err:
        load_weights(build_encoder("resnet10"), tmp_path / "r18.pt")
    assert "shortcut type differs" not in str(err.value)
    with pytest.raises(MedtlError, match="grey weights do not adapt to an RGB model"):
        load_weights(build_encoder("resnet10", in_channels=3), tmp_path / "r10.pt")


def test_a_lifted_checkpoint_is_refused_as_a_source(tmp_path):
    from medtl.models.transfer import encoder_for

    enc = lift(build_encoder("resnet10"), "acs")
    ck = save_checkpoint(tmp_path / "acs.pt", Model(enc, Head(enc.out_features, "binary", 2)))
    for lift_name in ("none", "i3d"):
        with pytest.raises(MedtlError, match=r"lifted to 3D \(acs\)"):
            encoder_for(ck, 3, lift_name, arch="resnet10")
