#!/usr/bin/env bash
# The commands that build every manifest in this folder from the shared data's raw manifests, with the
# split seed 0 and near-copy grouping on (each build ends with `medtl manifest check`'s report).
# Run from the repository root:  bash data_manifests/build.sh [data root]   (default: $MEDTL_DATA_ROOT or ../shared/data)
# The order matters: mri2d_tumor4_minus_yesno drops the images that copy mri2d_yesno, so mri2d_yesno comes first.
# These manifests group near-copies at correlation 0.99 (the data README's threshold, the default until
# 2026-12-01): every run on docs/results.md used them. The default is now 0.97, which also catches sharpened
# and re-encoded copies; `medtl manifest check --near-copy-correlation 0.97 data_manifests/mri2d_tumor4.csv`
# lists what 0.99 left across splits (docs/results_notes/summary.md gives the count). They compare whole frames
# only (--no-cut-to-head, as every build did until 2026-12-02): a slice re-cropped or padded to another frame is
# found only cut to the head, which `medtl manifest check --cut-to-head` does (the same summary gives the count).
set -euo pipefail
root=${1:-${MEDTL_DATA_ROOT:-../shared/data}}
out=data_manifests
for set in cxr_nih cxr_actualmed cxr_kermany mri2d_tumor4 mri2d_yesno mri3d_ixi; do
  medtl manifest build --from "$root/$set/manifest.csv" --data-root "$root" --near-copy-correlation 0.99 --no-cut-to-head --out "$out/$set.csv"
done
medtl manifest build --from "$root/dicom/manifest.csv" --data-root "$root" --near-copy-correlation 0.99 --no-cut-to-head --out "$out/dicom.csv" --unlabelled
# PneumoniaMNIST keeps its published split (near-copy groups are moved whole into one side)
medtl manifest build --from "$root/cxr_kermany/pneumoniamnist_28px.npz" --data-root "$root" --near-copy-correlation 0.99 --no-cut-to-head \
  --out "$out/cxr_kermany_pneumoniamnist.csv" --label-names normal,pneumonia --keep-source-split
# the brain-tumour source for the mri2d_site_shift pipeline: without the images its target also holds. A copy is
# a whole-frame thumbnail correlating above 0.9, or one cut to the head above 0.85 where one of the two had a margin
# to cut (slices re-cropped or padded to another frame; added 2026-12-02: 679 dropped, 621 before, which
# docs/results.md's runs used). Copies with
# another intensity window score 0.80-0.85 cut to the head, among look-alikes of other slices: some remain.
medtl manifest build --from "$root/mri2d_tumor4/manifest.csv" --data-root "$root" --near-copy-correlation 0.99 --no-cut-to-head \
  --out "$out/mri2d_tumor4_minus_yesno.csv" --exclude-near-copies-of "$out/mri2d_yesno.csv"
# The committed manifests record no data root: they are read under --data-root or $MEDTL_DATA_ROOT (default
# ../shared/data), wherever the data lives on a machine; a root recorded here would hold this machine's path.
python - "$out" <<'PY'
import json, pathlib, sys
for meta in sorted(pathlib.Path(sys.argv[1]).glob("*.meta.json")):
    record = json.loads(meta.read_text())
    record.pop("data_root", None), record.pop("data_root_absolute", None)
    meta.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
PY
