"""Before/after figure and deletion-test numbers for the Grad-CAM fix (issue #13, part 1).

Run from the repository root, after training the model this explains:

    medtl pretrain --manifest data_manifests/mri2d_tumor4.csv --data-root $MEDTL_DATA_ROOT \
        --out /tmp/gradcam_run/tumor4_r10_64 --arch resnet10 --image-size 64 --epochs 4 \
        --batch-size 32 --max-steps-per-epoch 60 --seed 0 --workers 0 --no-progress
    python docs/figures/gradcam_before_after.py /tmp/gradcam_run/tumor4_r10_64/model.pt

"Before" is MONAI's GradCAM with its default postprocessing (what medtl called until the fix);
"after" is explain.gradcam. Writes docs/figures/gradcam_before_after.png and one deletion-test JSON
per map and control (gradcam_deletion_*.json), and prints the numbers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from medtl.data import Manifest, build_dataset
from medtl.evaluation.explain import deletion_summary, deletion_test, gradcam, save_deletion_test
from medtl.evaluation.figures import colormap, subplots, to_png
from medtl.models import load_checkpoint
from medtl.paths import default_data_root

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def old_gradcam(model, x, layer, c):
    """The map medtl drew before the fix: MONAI GradCAM with its default postprocessing."""
    from monai.visualize import GradCAM

    model.eval()
    return GradCAM(nn_module=model, target_layers=layer)(x, class_idx=c)[0, 0].detach().numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--layer", default="encoder.layer3")
    ap.add_argument("--n", type=int, default=256, help="test images in the deletion test")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.time()
    torch.manual_seed(args.seed)
    root = Path(args.data_root) if args.data_root else default_data_root()
    model, meta = load_checkpoint(args.checkpoint)
    model.eval()
    names = meta["label_names"]
    size = int(meta["image_size"][0])  # square 2D images
    test = Manifest.load(REPO / "data_manifests/mri2d_tumor4.csv").select(split="test").sample(args.n, args.seed)
    ds = build_dataset(test, root, image_size=size, cache="none")
    items = [ds[i] for i in range(len(ds))]
    with torch.no_grad():
        probs = torch.softmax(model(torch.stack([it["image"] for it in items])), 1)
    acc = float((probs.argmax(1) == torch.tensor([int(it["label"]) for it in items])).float().mean())
    print(f"{len(items)} test images at {size} px, accuracy {acc:.3f}; layer {args.layer}")

    # Deletion tests: the fixed map with both controls, and the old map with the default control.
    results = {}
    runs = {
        "after_pixels": dict(target_layer=args.layer),
        "after_shifted": dict(target_layer=args.layer, control="shifted"),
        "before_pixels": dict(explain=lambda x, c: old_gradcam(model, x, args.layer, c)),
    }
    for name, kw in runs.items():
        res = deletion_test(model, items, seed=args.seed, **kw)
        res["model"] = str(args.checkpoint)
        res["data"] = f"mri2d_tumor4 test split, {len(items)} images (Manifest.sample({args.n}, seed={args.seed}))"
        save_deletion_test(res, HERE / f"gradcam_deletion_{name}.json")
        results[name] = res
        print(f"[{name}] {deletion_summary(res)}")

    # One tumour slice the model gets right, explained for its true class.
    pick = next(i for i, it in enumerate(items)
                if names[int(it["label"])] != "notumor" and int(probs[i].argmax()) == int(it["label"]))  # fmt: skip
    it = items[pick]
    c = int(it["label"])
    x = it["image"][None]
    before, after = old_gradcam(model, x, args.layer, c), gradcam(model, it["image"], args.layer, c)
    print(f"case {it['case_id']}: before == 1 - after: {np.allclose(before, 1 - after, atol=1e-5)}")
    fig, axes = subplots(1, 3, figsize=(9.6, 3.8))
    img = it["image"][0].numpy()
    for ax, (title, cam) in zip(axes, [("slice", None), ("before: MONAI default (inverted)", before),
                                       ("after: explain.gradcam", after)]):  # fmt: skip
        ax.imshow(img, cmap="gray")
        if cam is not None:
            rgba = colormap("jet")(np.clip(cam, 0, 1))
            rgba[..., 3] = 0.6 * np.clip(cam, 0, 1)  # as overlay_png: opacity follows the map
            ax.imshow(rgba)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    b, a = results["before_pixels"]["difference"], results["after_pixels"]["difference"]
    fig.suptitle(f"{Path(it['case_id']).name} ({names[c]}, P = {probs[pick, c]:.2f}); Grad-CAM of {args.layer}\n"
                 f"deletion test, top 20% minus random 20%, n = {len(items)}: before {b['mean']:+.3f} "
                 f"[{b['ci'][0]:+.3f}, {b['ci'][1]:+.3f}], after {a['mean']:+.3f} [{a['ci'][0]:+.3f}, {a['ci'][1]:+.3f}]",
                 fontsize=9)  # fmt: skip
    (HERE / "gradcam_before_after.png").write_bytes(to_png(fig))
    summary = {k: {"drop_top": r["drop_top"], "drop_random": r["drop_random"], "difference": r["difference"],
                   "top_larger": r["top_larger"]} for k, r in results.items()}  # fmt: skip
    print(json.dumps({"accuracy": acc, "case": it["case_id"], "seconds": round(time.time() - t0, 1), **summary}))


if __name__ == "__main__":
    main()
