"""Lifting a 2D encoder to 3D volumes, three ways, chosen by name with :func:`lift`.

``i3d``  Inflation (Carreira & Zisserman 2017): every k x k kernel becomes d x k x k, initialised by
         repeating it along depth divided by d (``init="repeat"``) or by putting it in the central
         depth tap (``init="centre"``); norms and pools become 3D. Depth padding replicates the
         border slices (in-plane padding stays zero), so on a volume constant along depth every
         layer's output is constant along depth and equals the 2D layer's output on one slice: the
         inflated network reproduces the 2D features exactly, whatever the depth.
``acs``  ACS convolutions (Yang et al. 2021): each 2D kernel's output channels are split into three
         groups, the kernel applied as 1 x k x k, k x 1 x k and k x k x 1 (in the planes across axes 0,
         1 and 2: for the data layer's RAS volumes sagittal, coronal and axial). The weights keep their
         2D shapes: a 2D state dict loads as is. The first group takes the remainder channels (the
         reference implementation spreads them over the first two), so ACS-trained weights from it
         would meet other channel groups; 2D weights are unaffected.
``2.5d`` The 2D encoder applied to every slice (or every ``slice_stride``-th) with shared weights; slice
         features aggregated by their mean or by attention pooling (Ilse et al. 2018).

The spatial axes of a volume ``(B, C, D, H, W)`` are numbered 0, 1, 2; ``depth_axis`` / ``slice_axis``
choose the one treated as depth (default 0). The data layer's RAS volumes ``(1, X, Y, Z)`` have
axial slices along axis 2.

:func:`layer_groups` (any encoder's stages, lifted or not) lives here too, below encoders.py, which imports
this module to rebuild a lifted encoder from its config.
"""

from __future__ import annotations

import copy
import functools
import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medtl.errors import MedtlError

LIFTS = ("i3d", "acs", "2.5d")


# --- shared 2D -> 3D module conversion ---------------------------------------------------------------


def _pair(v, what: str) -> int:
    # The lifts assume square in-plane kernels/strides/padding, as every supported encoder has.
    v = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    if isinstance(v[0], str) or v[0] != v[1]:
        raise MedtlError(f"cannot lift a layer with non-square {what} {v}", "lift")
    return int(v[0])


def _with_depth(value: int, depth_value: int, axis: int) -> tuple[int, int, int]:
    out = [value, value, value]
    out[axis] = depth_value
    return tuple(out)


def _pool3d(pool: nn.Module, axis: int, depth: bool) -> nn.Module:
    """A 2D pool as 3D: the same window along depth (``depth``) or none (keeps depth resolution)."""
    if isinstance(pool, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        size = pool.output_size
        if any(s not in (1, None) for s in (size if isinstance(size, tuple) else (size,))):
            raise MedtlError(f"cannot lift adaptive pooling to size {size}: only global pooling", "lift")
        return nn.AdaptiveAvgPool3d(1) if isinstance(pool, nn.AdaptiveAvgPool2d) else nn.AdaptiveMaxPool3d(1)
    k = _pair(pool.kernel_size, "pool kernel")
    s = _pair(pool.stride, "pool stride")
    p = _pair(pool.padding, "pool padding")
    kd, sd, pd = (k, s, p) if depth else (1, 1, 0)
    if isinstance(pool, nn.MaxPool2d):
        return nn.MaxPool3d(_with_depth(k, kd, axis), _with_depth(s, sd, axis), _with_depth(p, pd, axis),
                            ceil_mode=pool.ceil_mode)
    return nn.AvgPool3d(_with_depth(k, kd, axis), _with_depth(s, sd, axis), _with_depth(p, pd, axis),
                        ceil_mode=pool.ceil_mode, count_include_pad=pool.count_include_pad)


def _norm3d(norm: nn.Module) -> nn.Module:
    cls = nn.BatchNorm3d if isinstance(norm, nn.BatchNorm2d) else nn.InstanceNorm3d
    new = cls(norm.num_features, eps=norm.eps, momentum=norm.momentum, affine=norm.affine,
              track_running_stats=norm.track_running_stats)
    floats = [t for t in norm.state_dict().values() if t.is_floating_point()]
    if floats:
        new = new.to(floats[0].device, floats[0].dtype)
    new.load_state_dict(norm.state_dict())  # same parameter shapes: statistics carry over
    return new


def _convert(module: nn.Module, conv_fn, axis: int, pool_depth: bool) -> None:
    """Replace, in place, every 2D layer under ``module`` by its 3D counterpart."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Conv2d):
            new = conv_fn(child)
        elif isinstance(child, (nn.BatchNorm2d, nn.InstanceNorm2d)):
            new = _norm3d(child)
        elif isinstance(child, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            new = _pool3d(child, axis, pool_depth)
        elif isinstance(child, nn.Dropout2d):
            new = nn.Dropout3d(child.p)
        elif type(child).__name__.endswith("2d") or isinstance(child, nn.modules.conv._ConvNd):
            raise MedtlError(f"cannot lift layer {name} of type {type(child).__name__}", "lift")
        else:
            _convert(child, conv_fn, axis, pool_depth)
            continue
        setattr(module, name, new)
    # MONAI's type-A shortcut is a functools.partial (no module): it pools with a spatial_dims argument.
    down = getattr(module, "downsample", None)
    if isinstance(down, functools.partial) and down.keywords.get("spatial_dims") == 2:
        if not pool_depth:
            raise MedtlError(
                "a type-A ResNet shortcut strides along depth too: it cannot be lifted with depth_stride=False "
                "(use depth_stride=True, or a shortcut='B' encoder)",
                "lift",
            )
        module.downsample = functools.partial(down.func, *down.args, **{**down.keywords, "spatial_dims": 3})


def _lifted_copy(encoder: nn.Module, method: str, options: dict[str, Any]) -> nn.Module:
    if getattr(encoder, "spatial_dims", 2) != 2:
        raise MedtlError(
            f"lift {method!r} needs a 2D encoder; this one is {encoder.spatial_dims}D "
            f"({'already lifted' if encoder.config.get('lift') else 'built 3D'})",
            "lift",
        )
    return copy.deepcopy(encoder)


def _finish(enc: nn.Module, base: nn.Module, method: str, options: dict[str, Any]) -> nn.Module:
    enc.spatial_dims = 3
    enc.config = {**base.config, "lift": {"method": method, **options}}
    return enc


# --- I3D inflation ------------------------------------------------------------------------------------


class DepthReplicateConv3d(nn.Conv3d):
    """Conv3d padded along the depth axis by replicating border slices (zero padding in-plane).

    Replicate padding keeps a volume that is constant along depth constant after the convolution,
    which is what makes inflation exact on such volumes (zero padding would dim the border slices).
    """

    def __init__(self, *args, depth_axis: int = 0, depth_pad: tuple[int, int] = (0, 0), **kwargs):
        super().__init__(*args, **kwargs)
        self.depth_axis = depth_axis
        self.depth_pad = tuple(depth_pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.depth_pad):
            pad = [0] * 6  # F.pad lists (last axis first): W, H, D
            pad[2 * (2 - self.depth_axis)], pad[2 * (2 - self.depth_axis) + 1] = self.depth_pad
            x = F.pad(x, pad, mode="replicate")
        return super().forward(x)


def inflate_conv(conv: nn.Conv2d, depth_kernel: int | None = None, init: str = "repeat", depth_axis: int = 0,
                 depth_stride: bool = True) -> DepthReplicateConv3d:
    """One 2D convolution inflated to 3D (see the module docstring)."""
    k = _pair(conv.kernel_size, "kernel")
    s, p, dil = _pair(conv.stride, "stride"), _pair(conv.padding, "padding"), _pair(conv.dilation, "dilation")
    d = k if depth_kernel is None else int(depth_kernel)
    sd, dd = (s, dil) if depth_stride else (1, 1)
    total = dd * (d - 1)  # depth padding that keeps depth size / stride, like in-plane "same"
    new = DepthReplicateConv3d(
        conv.in_channels, conv.out_channels, _with_depth(k, d, depth_axis), stride=_with_depth(s, sd, depth_axis),
        padding=_with_depth(p, 0, depth_axis), dilation=_with_depth(dil, dd, depth_axis), groups=conv.groups,
        bias=conv.bias is not None, depth_axis=depth_axis, depth_pad=(total // 2, total - total // 2),
    ).to(conv.weight.device, conv.weight.dtype)
    w2 = conv.weight.detach().unsqueeze(2 + depth_axis)  # (O, I, 1, k, k) with depth at depth_axis
    with torch.no_grad():
        if init == "repeat":
            new.weight.copy_(w2.expand_as(new.weight) / d)  # d taps sum back to the 2D kernel
        else:
            new.weight.zero_()
            new.weight.narrow(2 + depth_axis, d // 2, 1).copy_(w2)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def inflate(encoder: nn.Module, depth_kernel: int | None = None, init: str = "repeat", depth_axis: int = 0,
            depth_stride: bool = True) -> nn.Module:
    """I3D-inflated copy of a 2D encoder.

    ``depth_kernel``: d for every kernel (None: d = k, cubic kernels). ``depth_stride``: strides and
    pools act along depth as in-plane (True) or depth resolution is kept (False).
    """
    if init not in ("repeat", "centre"):
        raise MedtlError(f"i3d init must be 'repeat' or 'centre', got {init!r}", "lift.init")
    if depth_axis not in (0, 1, 2):
        raise MedtlError(f"depth_axis must be 0, 1 or 2, got {depth_axis!r}", "lift.depth_axis")
    if depth_kernel is not None and (not isinstance(depth_kernel, int) or depth_kernel < 1):
        raise MedtlError(f"depth_kernel must be a positive integer, got {depth_kernel!r}", "lift.depth_kernel")
    opts = {"depth_kernel": depth_kernel, "init": init, "depth_axis": depth_axis, "depth_stride": depth_stride}
    enc = _lifted_copy(encoder, "i3d", opts)
    _convert(enc, lambda c: inflate_conv(c, depth_kernel, init, depth_axis, depth_stride), depth_axis, depth_stride)
    return _finish(enc, encoder, "i3d", opts)


# --- ACS convolutions --------------------------------------------------------------------------------


def acs_split(out_channels: int) -> tuple[int, int, int]:
    """Output channels of the groups whose kernels are flat along axes 0, 1 and 2 (sagittal, coronal and
    axial for RAS volumes); the first takes the remainder."""
    third = out_channels // 3
    return out_channels - 2 * third, third, third


class ACSConv(nn.Module):
    """A 2D kernel ``(O, I, k, k)`` applied to volumes as three views, one per plane.

    Output channels ``[0, a)`` use the kernel as 1 x k x k (plane of axes 1, 2: sagittal for RAS
    volumes, axial when axis 0 is the depth), ``[a, a + c)`` as k x 1 x k (coronal for RAS) and the
    rest as k x k x 1 (axial for RAS). Same weight and bias shapes as
    the 2D convolution, so 2D weights are reused unchanged.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, bias: bool = True):
        super().__init__()
        if kernel_size % 2 == 0 or padding != dilation * (kernel_size - 1) // 2:
            # Otherwise the three views give different output sizes and cannot be concatenated.
            raise MedtlError(
                f"ACS needs odd kernels with 'same' padding; got kernel {kernel_size}, padding {padding}", "lift"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.split = acs_split(out_channels)

    @classmethod
    def from_conv2d(cls, conv: nn.Conv2d) -> "ACSConv":
        if conv.groups != 1:
            raise MedtlError("ACS cannot lift grouped convolutions", "lift")
        new = cls(conv.in_channels, conv.out_channels, _pair(conv.kernel_size, "kernel"), _pair(conv.stride, "stride"),
                  _pair(conv.padding, "padding"), _pair(conv.dilation, "dilation"), conv.bias is not None)
        new = new.to(conv.weight.device, conv.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(conv.weight)
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs, start = [], 0
        for axis, n in enumerate(self.split):
            if n == 0:
                continue
            w = self.weight[start : start + n].unsqueeze(2 + axis)  # kernel of size 1 along `axis`
            b = None if self.bias is None else self.bias[start : start + n]
            outs.append(F.conv3d(x, w, b, self.stride, _with_depth(self.padding, 0, axis), self.dilation))
            start += n
        return torch.cat(outs, 1)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, split={self.split}")


def acs(encoder: nn.Module) -> nn.Module:
    """ACS copy of a 2D encoder: convolutions become :class:`ACSConv`, norms and pools 3D (cubic)."""
    enc = _lifted_copy(encoder, "acs", {})
    _convert(enc, ACSConv.from_conv2d, 0, True)
    return _finish(enc, encoder, "acs", {})


# --- 2.5D -----------------------------------------------------------------------------------------


class AttentionPool(nn.Module):
    """Attention-based pooling of a bag of slice features (Ilse et al. 2018): softmax(w^T tanh(V h))."""

    def __init__(self, in_features: int, hidden: int = 128):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(in_features, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, S, F) -> (B, F)
        a = self.score(h).softmax(dim=1)
        return (a * h).sum(1)


class SliceEncoder(nn.Module):
    """2.5D: a 2D encoder on the slices of a volume with shared weights; features aggregated."""

    def __init__(self, encoder: nn.Module, aggregate: str = "mean", slice_stride: int = 1, slice_axis: int = 0,
                 attention_hidden: int = 128):
        super().__init__()
        if getattr(encoder, "spatial_dims", 2) != 2:
            raise MedtlError(f"2.5d needs a 2D encoder; this one is {encoder.spatial_dims}D", "lift")
        if aggregate not in ("mean", "attention"):
            raise MedtlError(f"2.5d aggregate must be 'mean' or 'attention', got {aggregate!r}", "lift.aggregate")
        if slice_axis not in (0, 1, 2):
            raise MedtlError(f"slice_axis must be 0, 1 or 2, got {slice_axis!r}", "lift.slice_axis")
        if not isinstance(slice_stride, int) or slice_stride < 1:
            raise MedtlError(f"slice_stride must be a positive integer, got {slice_stride!r}", "lift.slice_stride")
        self.encoder = encoder
        self.pool = AttentionPool(encoder.out_features, attention_hidden) if aggregate == "attention" else None
        self.aggregate, self.slice_stride, self.slice_axis = aggregate, slice_stride, slice_axis
        self.spatial_dims, self.in_channels, self.out_features = 3, encoder.in_channels, encoder.out_features
        opts = {"aggregate": aggregate, "slice_stride": slice_stride, "slice_axis": slice_axis}
        if aggregate == "attention":
            opts["attention_hidden"] = attention_hidden
        self.config = {**encoder.config, "lift": {"method": "2.5d", **opts}}

    def slices(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, D, H, W)`` -> ``(B, S, C, H, W)``: the chosen slices, depth moved next to batch."""
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise MedtlError(f"2.5d encoder expects (B, {self.in_channels}, D, H, W), got {tuple(x.shape)}", "encoder input")
        return x.movedim(2 + self.slice_axis, 1)[:, :: self.slice_stride]

    def slice_features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-slice features ``(B, S, F)``: the 2D encoder on every slice in one batch."""
        s = self.slices(x)
        b, n = s.shape[:2]
        return self.encoder(s.reshape(b * n, *s.shape[2:])).reshape(b, n, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.slice_features(x)
        return h.mean(1) if self.pool is None else self.pool(h)

    def layer_groups(self) -> list[nn.Module]:
        groups = layer_groups(self.encoder)
        if self.pool is not None:
            groups[-1] = nn.ModuleList([groups[-1], self.pool])  # pooling learns with the top stage
        return groups


def layer_groups(encoder: nn.Module) -> list[nn.Module]:
    """The encoder's stages, input side first (its ``layer_groups()``, else its top-level children)."""
    if hasattr(encoder, "layer_groups"):
        return list(encoder.layer_groups())
    groups = [m for m in encoder.children() if any(True for _ in m.parameters())]
    return groups or [encoder]


def slices(encoder: nn.Module, aggregate: str = "mean", slice_stride: int = 1, slice_axis: int = 0,
           attention_hidden: int = 128) -> SliceEncoder:
    """2.5D wrapper around (not a copy of) the 2D encoder."""
    return SliceEncoder(encoder, aggregate, slice_stride, slice_axis, attention_hidden)


_LIFT_FUNCS = {"i3d": inflate, "acs": acs, "2.5d": slices}


def lift(encoder: nn.Module, method: str, **options) -> nn.Module:
    """Lift a 2D encoder to 3D by name: ``"i3d"``, ``"acs"`` or ``"2.5d"`` (options as the functions)."""
    fn = _LIFT_FUNCS.get(method)
    if fn is None:
        raise MedtlError(f"unknown lift {method!r}; known: {', '.join(LIFTS)}", "lift.method")
    known = [p for p in inspect.signature(fn).parameters if p != "encoder"]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise MedtlError(f"unknown option(s) {unknown} for lift {method!r}; known: {known}", "lift")
    if not hasattr(encoder, "config") or not hasattr(encoder, "out_features"):
        raise MedtlError("lift needs a medtl encoder (with config and out_features)", "lift")
    return fn(encoder, **options)
