import time, statistics
import medtl  # noqa: F401 (sets thread defaults first)
import torch, torch.nn as nn
from medtl.models.encoders import build_encoder
from medtl.engine.inference import to_channels_last, channels_last_input
torch.manual_seed(0)
enc = build_encoder("resnet18", spatial_dims=2)
model = nn.Sequential(enc, nn.Linear(512, 4))
to_channels_last(model)
opt = torch.optim.AdamW(model.parameters(), 1e-3)
x = channels_last_input(torch.randn(32, 1, 128, 128)); y = torch.randint(0, 4, (32,))
ts = []
for i in range(25):
    t = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nn.functional.cross_entropy(model(x).float(), y)
    opt.zero_grad(); loss.backward(); opt.step()
    ts.append(time.perf_counter() - t)
print(f"{statistics.median(ts[5:])*1000:.1f}")
