#!/usr/bin/env bash
# The commands that build every manifest in this folder from the shared data's raw manifests, with the
# split seed 0 and near-copy grouping on (each build ends with `medtl manifest check`'s report).
# Run from the repository root:  bash data_manifests/build.sh [data root]   (default: $MEDTL_DATA_ROOT or ../shared/data)
# The order matters: mri2d_tumor4_minus_yesno drops the images that copy mri2d_yesno, so mri2d_yesno comes first.
set -euo pipefail
root=${1:-${MEDTL_DATA_ROOT:-../shared/data}}
out=data_manifests
for set in cxr_nih cxr_actualmed cxr_kermany mri2d_tumor4 mri2d_yesno mri3d_ixi; do
  medtl manifest build --from "$root/$set/manifest.csv" --data-root "$root" --out "$out/$set.csv"
done
medtl manifest build --from "$root/dicom/manifest.csv" --data-root "$root" --out "$out/dicom.csv" --unlabelled
# PneumoniaMNIST keeps its published split (near-copy groups are moved whole into one side)
medtl manifest build --from "$root/cxr_kermany/pneumoniamnist_28px.npz" --data-root "$root" \
  --out "$out/cxr_kermany_pneumoniamnist.csv" --label-names normal,pneumonia --keep-source-split
# the brain-tumour source for the mri2d_site_shift pipeline: without the images its target also holds
medtl manifest build --from "$root/mri2d_tumor4/manifest.csv" --data-root "$root" \
  --out "$out/mri2d_tumor4_minus_yesno.csv" --exclude-near-copies-of "$out/mri2d_yesno.csv"
