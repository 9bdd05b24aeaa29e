"""Encoders and lifts at their default sizes: parameters, forward FLOPs per input, training step time.

2D: ResNet-18 (stem stride 2) at the 2D presets' 128 px, batch 16. 3D: the same 2D encoder lifted by
2.5D (slices along RAS axis 2), I3D (depth along axis 2) and ACS, at the mri3d preset's 80x96x80
volume, batch 2 (the pipeline's lift options). FLOPs are counted by
``torch.utils.flop_counter.FlopCounterMode`` over one forward pass of one input (eval mode,
convolutions and matrix products; a multiply-add counts as 2). The step is forward + backward +
AdamW with a binary head, in memory.
"""

from __future__ import annotations

import torch

from benchmarks.common import Row, Settings, median, spread, timed, to_layout, train_step_fn


def variants(smoke: bool):
    from medtl.models import LIFT_OPTIONS, build_encoder, lift

    arch = "resnet10" if smoke else "resnet18"
    size2, vol = (32, (32, 32, 32)) if smoke else (128, (80, 96, 80))
    b2, b3 = (4, 2) if smoke else (16, 2)

    def lifted(name):
        return lambda: lift(build_encoder(arch, stem_stride=2), name, **LIFT_OPTIONS.get(name, {}))

    return [
        (f"{arch} 2D", lambda: build_encoder(arch, stem_stride=2), (1, size2, size2), b2),
        (f"{arch} 2.5D (mean over axial slices)", lifted("2.5d"), (1, *vol), b3),
        (f"{arch} I3D", lifted("i3d"), (1, *vol), b3),
        (f"{arch} ACS", lifted("acs"), (1, *vol), b3),
    ]


def forward_flops(model: torch.nn.Module, shape) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *shape))
    return int(counter.get_total_flops())


def run(s: Settings) -> list[Row]:
    from medtl.models import Head, Model

    rows = []
    for name, build, shape, batch in variants(s.smoke):
        torch.manual_seed(0)
        enc = build()
        model = Model(enc, Head(enc.out_features, "binary"))
        params = sum(p.numel() for p in model.parameters())
        flops = forward_flops(model, shape)
        model.to(s.dev)
        x = torch.randn(batch, *shape, device=s.dev)
        y = torch.arange(batch, device=s.dev) % 2
        model, x = to_layout(model, x, s.channels_last)
        step = train_step_fn(model, x, y, s, s.amp_dtype)
        step()  # warm-up (allocations, oneDNN primitive caches)
        times = [timed(step, s.dev) for _ in range(max(2, s.repeats if not s.smoke else 2))]
        t = median(times) / s.inner  # one step
        size = "x".join(map(str, shape[1:]))
        rows.append(Row("models", f"{name} @ {size}: params / fwd GFLOPs per input",
                        f"{params / 1e6:.2f} M / {flops / 1e9:.2f}",
                        data={"params": params, "forward_flops": flops, "batch": batch, "step_s": times}))
        rows.append(Row("models", f"{name} @ {size}: train step, batch {batch}",
                        f"{t * 1e3:,.0f} ms ({t / batch * 1e3:,.0f} ms/input){spread(times)}"))
        del model, x, step
    return rows
