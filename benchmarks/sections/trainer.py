"""Trainer overhead: ``medtl.engine.fit`` with the ``full`` strategy vs a minimal hand-written PyTorch loop.

Same model (encoder + head, same initial weights), same in-memory batches (a list of dicts, so no
loader cost on either side), same batch size, optimiser (AdamW, same lr and weight decay) and number
of steps. The trainer runs with its defaults (cosine schedule, per-step loss checks, per-epoch
reseeding and best-state copy) except ``progress=False``, and without a run folder (no files).
Time is per optimiser step, including each side's setup (optimiser, moving the model).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks.common import Row, Settings, interleaved, median, spread, status, to_layout

TARGET = 1.05  # trainer time per step at most 5% above the plain loop's


def run(s: Settings) -> list[Row]:
    from medtl.engine import fit
    from medtl.models import Head, build_encoder
    from medtl.strategies.registry import get_strategy

    arch, size, batch, steps, epochs = ("resnet10", 32, 4, 2, 2) if s.smoke else ("resnet18", 128, 16, 10, 2)
    dev = s.dev
    torch.manual_seed(0)
    enc = build_encoder(arch, stem_stride=2)
    head = Head(enc.out_features, "binary")
    init = {"encoder": {k: v.clone() for k, v in enc.state_dict().items()},
            "head": {k: v.clone() for k, v in head.state_dict().items()}}
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(steps):
        x = torch.randn(batch, 1, size, size, generator=g)
        y = torch.randint(0, 2, (batch,), generator=g)
        if s.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if s.pin_memory and dev.type == "cuda":
            x, y = x.pin_memory(), y.pin_memory()
        batches.append({"image": x, "label": y})
    lr, wd = 1e-3, 1e-4

    def fresh():
        enc.load_state_dict(init["encoder"])
        head.load_state_dict(init["head"])
        for p in list(enc.parameters()) + list(head.parameters()):
            p.requires_grad_(True)
        enc.to(dev), head.to(dev)
        if s.channels_last:
            to_layout(enc, batches[0]["image"], True)

    def trainer():
        fresh()
        strategy = get_strategy("full")(enc, head, {"lr": lr, "weight_decay": wd})
        fit(strategy, batches, None, epochs=epochs, device=s.device, amp=s.amp, progress=False)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.head = enc, head

        def forward(self, x):
            return self.head(self.encoder(x))

    net = Net()

    def plain():
        fresh()
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=wd)
        net.train()
        for _ in range(epochs):
            for b in batches:
                x = b["image"].to(dev, non_blocking=True)
                y = b["label"].to(dev, non_blocking=True)
                opt.zero_grad(set_to_none=True)
                with torch.autocast(dev.type, dtype=s.amp_dtype, enabled=s.amp_dtype is not None):
                    logits = net(x)
                loss = F.cross_entropy(logits.float(), y)
                loss.backward()
                opt.step()

    times = interleaved({"plain": plain, "trainer": trainer}, s.repeats, dev)
    n = steps * epochs
    t_plain, t_trainer = median(times["plain"]) / n, median(times["trainer"]) / n
    ratio = t_trainer / t_plain
    what = f"{arch} 2D {size}px, batch {batch}, {n} steps"
    data = {"arch": arch, "image_size": size, "batch_size": batch, "steps": n, "plain_s": times["plain"],
            "trainer_s": times["trainer"], "ratio": ratio}
    return [
        Row("trainer", f"plain PyTorch loop, time/step ({what})", f"{t_plain * 1e3:.1f} ms{spread(times['plain'])}",
            data=data),
        Row("trainer", "medtl fit (full strategy), time/step", f"{t_trainer * 1e3:.1f} ms{spread(times['trainer'])}"),
        Row("trainer", "trainer overhead (fit / plain - 1)", f"{100 * (ratio - 1):+.1f}%", "<= +5%",
            status(ratio <= TARGET), data),
    ]
