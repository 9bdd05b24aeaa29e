"""Compute options for the MONAI ResNet-18 2D encoder at 128 px, batch 16, side by side in one process.

Training step (forward + backward + AdamW, binary head) and forward-only (no grad, eval mode: what
feature extraction and inference do) for: fp32 (contiguous, stem stride 2: the baseline), bf16
autocast, channels_last memory, both, and the stem stride 1 (MONAI's default) instead of 2; with
``--compile`` also ``torch.compile`` of the baseline. Speed is baseline time / option time (above 1 =
faster). Rounds run every option once in rotating order; medians over rounds.

References (earlier measurements on the 2-core development CPUs): bf16 0.72-0.75x of fp32,
channels_last 7-17% faster, stride-1 stem about 4x slower. The rows check the project's defaults:
no autocast on CPU (bf16 on CUDA), channels_last where it pays, stem stride 2.
"""

from __future__ import annotations

import copy

import torch

from benchmarks.common import Row, Settings, interleaved, median, spread, status, to_layout, train_step_fn


def run(s: Settings) -> list[Row]:
    from medtl.models import Head, Model, build_encoder

    arch, size, batch = ("resnet10", 32, 4) if s.smoke else ("resnet18", 128, 16)
    dev = s.dev
    low = torch.bfloat16 if s.amp == "off" else s.amp_dtype  # the reduced precision to test
    low_name = {torch.bfloat16: "bf16", torch.float16: "fp16"}[low]
    torch.manual_seed(0)
    base = Model(build_encoder(arch, stem_stride=2), Head(512, "binary"))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, size, size, generator=g).to(dev)
    y = (torch.arange(batch) % 2).to(dev)

    def model(stride=2, cl=False):
        m = copy.deepcopy(base)
        if stride != 2:  # same weights, stem stride changed (the stride is not a parameter)
            m.encoder.conv1.stride = (stride, stride)
        m = m.to(dev)
        return to_layout(m, x, True)[0] if cl else m

    xc = x.contiguous(memory_format=torch.channels_last)
    configs = {  # name: (model, input, autocast dtype)
        "fp32": (model(), x, None),
        low_name: (model(), x, low),
        "channels_last": (model(cl=True), xc, None),
        f"channels_last+{low_name}": (model(cl=True), xc, low),
        "stem stride 1": (model(stride=1), x, None),
    }
    if s.compile:
        configs["torch.compile"] = (torch.compile(model()), x, None)
    steps = {name: train_step_fn(m, xi, y, s, dt) for name, (m, xi, dt) in configs.items()}

    def forward(m, xi, dt):
        def fn():
            m.eval()
            with torch.no_grad(), torch.autocast(dev.type, dtype=dt, enabled=dt is not None):
                for _ in range(s.inner):
                    m(xi)
        return fn

    fwd_names = ["fp32", low_name, "channels_last", f"channels_last+{low_name}"]
    fwds = {f"fwd {n}": forward(*configs[n]) for n in fwd_names}
    warm = 2 if s.compile else 1
    t = interleaved(steps, max(2, s.repeats), dev, warmup=warm)
    tf = interleaved(fwds, max(2, s.repeats), dev, warmup=warm)
    b, bf = median(t["fp32"]) / s.inner, median(tf["fwd fp32"]) / s.inner  # one step

    def speed(name):  # baseline time / option time
        return median(t["fp32"]) / median(t[name])

    def fspeed(name):
        return median(tf["fwd fp32"]) / median(tf[f"fwd {name}"])

    what = f"{arch} 2D {size}px batch {batch}"
    # amp bf16 autocasts in channels-last memory; each alone is information
    both = f"channels_last+{low_name}"
    data = {"train_s": t, "forward_s": tf, "arch": arch, "image_size": size, "batch": batch}
    rows = [
        Row("options", f"fp32 train step ({what})", f"{b * 1e3:,.0f} ms{spread(t['fp32'])}", data=data),
        Row("options", f"{low_name} autocast alone: train speed vs fp32", f"{speed(low_name):.2f}x"),
        Row("options", "channels_last alone: train speed vs fp32", f"{speed('channels_last'):.2f}x"),
        Row("options", f"{both} (amp {low_name}): train speed vs fp32", f"{speed(both):.2f}x",
            "> 1x (amp bf16 pays)", status(speed(both) > 1)),
        Row("options", "stem stride 2 vs 1: train speed", f"{1 / speed('stem stride 1'):.2f}x",
            "> 1x (stride 2 default); ref ~4x", status(speed("stem stride 1") < 1)),
        Row("options", "fp32 forward only (eval, no grad)", f"{bf * 1e3:,.0f} ms{spread(tf['fwd fp32'])}"),
        Row("options", f"{low_name} autocast alone: forward speed vs fp32", f"{fspeed(low_name):.2f}x"),
        Row("options", "channels_last alone: forward speed vs fp32", f"{fspeed('channels_last'):.2f}x"),
        Row("options", f"{both} (amp {low_name}): forward speed vs fp32", f"{fspeed(both):.2f}x",
            "> 1x (amp bf16 pays)", status(fspeed(both) > 1)),
    ]
    if s.compile:
        rows.append(Row("options", "torch.compile: train speed vs eager fp32", f"{speed('torch.compile'):.2f}x"))
    return rows
