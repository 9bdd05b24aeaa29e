"""The encoder a transfer run starts from: a checkpoint's 2D encoder (or a random one), lifted to 3D when
the target is volumetric.

Volumes are RAS after the ``mri3d`` preset: spatial axis 2 runs inferior-superior, so axial slices (the
in-plane view a 2D kernel knows best) lie across it; :data:`LIFT_OPTIONS` points the lifts at it.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from medtl.errors import MedtlError
from medtl.models.checkpoint import encoder_config
from medtl.models.encoders import build_encoder
from medtl.models.lift import lift as lift_encoder
from medtl.models.weights import load_weights

LIFT_OPTIONS: dict[str, dict[str, int]] = {"i3d": {"depth_axis": 2}, "2.5d": {"slice_axis": 2}}


def encoder_for(checkpoint: str | Path | None, dims: int, lift: str | None = "none", *, arch: str = "resnet18",
                stem_stride: int = 2) -> nn.Module:
    """The encoder for ``dims``-D inputs: ``checkpoint``'s encoder (rebuilt from its recorded config,
    else from ``arch``/``stem_stride``, its weights loaded loudly) or, without one, a randomly initialised
    ``arch``. A 2D encoder meets volumes through ``lift`` (``i3d``, ``acs``, ``2.5d``); a 3D checkpoint
    (e.g. self-supervised on volumes) and a network from scratch need none."""
    lift = lift or "none"
    enc_cfg = encoder_config(checkpoint) if checkpoint is not None else {}
    lifted = enc_cfg.get("lift")
    if lifted not in (None, "none"):  # its config says 2D: it would be read as a 2D encoder
        method = lifted.get("method", lifted) if isinstance(lifted, dict) else lifted
        raise MedtlError(f"{checkpoint} holds an encoder lifted to 3D ({method}): a source is the 2D encoder it "
                         "was lifted from (lifted here again) or a 3D encoder", "source")
    enc_cfg.pop("lift", None)
    checkpoint_dims = int(enc_cfg.get("spatial_dims", 2))
    if checkpoint is not None and checkpoint_dims != 2 and (checkpoint_dims != dims or lift != "none"):
        raise MedtlError(f"{checkpoint} holds a {checkpoint_dims}D encoder: it fits {checkpoint_dims}D inputs "
                         f"without a lift, not {dims}D ones with lift {lift!r}", "strategies.lift")
    if dims == 3 and lift == "none" and checkpoint_dims == 2:
        if checkpoint is not None:
            raise MedtlError("a 3D target needs a lift (i3d, acs or 2.5d) to use the 2D pretrained encoder; "
                             "use pretrained: false for a 3D network from scratch", "strategies.lift")
        return build_encoder(arch, spatial_dims=3, stem_stride=stem_stride)
    if checkpoint is not None:
        encoder = build_encoder(enc_cfg) if enc_cfg else build_encoder(arch, stem_stride=stem_stride)
        load_weights(encoder, checkpoint)
        if checkpoint_dims == 3:
            return encoder
    else:
        encoder = build_encoder(arch, spatial_dims=2, stem_stride=stem_stride)
    if dims == 3:
        encoder = lift_encoder(encoder, lift, **LIFT_OPTIONS.get(lift, {}))
    return encoder
