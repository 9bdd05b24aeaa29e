"""The deletion-test intervals of docs/evaluation.md's table, resampled by unit instead of by image.

The gradcam_deletion_*.json files predate resampling by unit: their intervals draw the 259 test images singly.
This script takes their per-image values and the images' patients and near-copy groups (the same
Manifest.sample as gradcam_before_after.py) and draws units, as deletion_test does now (same seed and
resamples). Run from the repository root; a second, no model or image is read:

    python docs/figures/gradcam_deletion_units.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medtl.data import Manifest
from medtl.evaluation.explain import _mean_ci, _units_of  # deletion_test's own resampling, on saved values

HERE = Path(__file__).resolve().parent


def main() -> None:
    test = Manifest.load(HERE.parents[1] / "data_manifests/mri2d_tumor4.csv").select(split="test").sample(256, 0)
    patients, copies = [r.patient_id for r in test], [r.extras.get("near_copy_group", "") for r in test]
    print("| map, control | units | difference, by image (saved) | difference, by unit |")
    print("|---|---|---|---|")
    for name in ("before_pixels", "after_pixels", "after_shifted"):
        saved = json.loads((HERE / f"gradcam_deletion_{name}.json").read_text())
        if saved["n"] != len(test):
            raise SystemExit(f"{name}: {saved['n']} images saved, {len(test)} in the manifest sample")
        unit = _units_of("auto", patients, copies, len(test))
        diff = np.array(saved["per_image"]["drop_top"]) - np.array(saved["per_image"]["drop_random"])
        rng = np.random.default_rng(saved["seed"] + 1)  # the difference's interval is drawn first, as deletion_test does
        new = _mean_ci(diff, saved["level"], 2000, rng, unit)
        old = saved["difference"]
        print(f"| {name} | {unit.max() + 1} of {len(test)} | {old['mean']:+.3f} ({old['ci'][0]:+.3f} to "
              f"{old['ci'][1]:+.3f}) | {new['mean']:+.3f} ({new['ci'][0]:+.3f} to {new['ci'][1]:+.3f}) |")


if __name__ == "__main__":
    main()
