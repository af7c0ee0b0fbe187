"""Encoders: a 1-D CNN for signals and a small 2-D ResNet for images.

Both use GroupNorm instead of BatchNorm: BatchNorm mixes statistics across the records of a
batch, which breaks per-record gradient clipping under DP-SGD (Opacus refuses it), while
GroupNorm normalises each record on its own. By default every convolution is
weight-standardised (:mod:`fedssl.ssl_core.ws_layers`): GroupNorm + Weight Standardization is
what lets BYOL/SimSiam train without batch statistics instead of collapsing (Richemond et al.
2020). ``ws=False`` gives plain convolutions (with a bias in the 1-D CNN, as before). Both
return a ``feature_dim`` vector per record, the representation evaluated by linear probe and
kNN: the 1-D CNN by global average pooling, the ResNet by average pooling its last stage to a
2x2 grid (``pool=2``, 256 features at width 16; ``pool=1``, global pooling to 64 features,
is the ResNet of runs before issue 21 and what a file without ``pool`` in its record rebuilds).

ResNet: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
GroupNorm: Wu & He, "Group Normalization", ECCV 2018.
Weight Standardization: Qiao et al., arXiv 1903.10520, 2019.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedssl.ssl_core.ws_layers import WSConv1d, WSConv2d


def _groups(channels: int) -> int:
    """Number of GroupNorm groups: 8 where it divides, else 1 (LayerNorm-like)."""
    return 8 if channels % 8 == 0 else 1


class ConvEncoder1d(nn.Module):
    """1-D CNN encoder for signals of shape ``(C, L)``.

    Example:
        >>> enc = ConvEncoder1d(in_channels=1, width=64)
        >>> enc(torch.zeros(4, 1, 40)).shape
        torch.Size([4, 128])
    """

    def __init__(self, in_channels: int = 1, width: int = 64, feature_dim: int = 128,
                 ws: bool = True) -> None:
        super().__init__()
        w = width

        def conv(c_in: int, c_out: int, k: int) -> nn.Module:
            if ws:  # the GroupNorm right after makes a bias redundant
                return WSConv1d(c_in, c_out, k, padding=k // 2, bias=False)
            return nn.Conv1d(c_in, c_out, k, padding=k // 2)

        self.body = nn.Sequential(
            conv(in_channels, w, 5),
            nn.GroupNorm(_groups(w), w),
            nn.ReLU(),
            conv(w, w, 3),
            nn.GroupNorm(_groups(w), w),
            nn.ReLU(),
            nn.MaxPool1d(2),
            conv(w, 2 * w, 3),
            nn.GroupNorm(_groups(2 * w), 2 * w),
            nn.ReLU(),
            conv(2 * w, feature_dim, 3),
            nn.GroupNorm(_groups(feature_dim), feature_dim),
            nn.ReLU(),
        )
        self.feature_dim = feature_dim
        #: the constructor's arguments: recorded beside exported weights (encoder_file.py)
        self.arch_kwargs = {"in_channels": in_channels, "width": width,
                            "feature_dim": feature_dim, "ws": ws}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features of a batch: the conv stack's output averaged over positions.

        Args:
            x: ``(N, C, L)`` records.

        Returns:
            ``(N, feature_dim)`` features.
        """
        return self.body(x).mean(dim=-1)

    def last_block(self) -> nn.Module:
        """The last convolution (the ``norm-bias-last`` trainable rule trains it; its norm and
        bias already belong to ``norm-bias``)."""
        return self.body[-3]


class _BasicBlock(nn.Module):
    """Residual block with two 3x3 convolutions and GroupNorm."""

    def __init__(self, c_in: int, c_out: int, stride: int, ws: bool = True) -> None:
        super().__init__()
        conv = WSConv2d if ws else nn.Conv2d
        self.conv1 = conv(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(_groups(c_out), c_out)
        self.conv2 = conv(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.act = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                conv(c_in, c_out, 1, stride=stride, bias=False),
                nn.GroupNorm(_groups(c_out), c_out),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class ResNetEncoder2d(nn.Module):
    """Small ResNet-style encoder (3 stages of basic blocks) for images ``(C, H, W)``.

    ``pool`` sets the readout: ``pool=1`` (the default, the architecture of files written
    before the option existed) global-average-pools the last stage to ``4 * width``
    features; ``pool=P`` average-pools it to a ``P x P`` grid and flattens it
    (``4 * width * P * P`` features), keeping where on the image a feature fired.
    ``multiscale=True`` adds the globally pooled first and second stages (``w + 2w`` more).
    New runs use ``pool=2`` (:data:`IMAGE_POOL`); the parameters are the same for every
    ``pool``, only the readout (and so ``feature_dim`` and the projector) differs.

    Why ``pool=2`` (issue 21; ``benchmarks/image_encoder.py``, real MNIST 28x28 from
    ``benchmarks/mnist5k.py``, 4,000 training / 1,000 test digits; probes on frozen
    features, full-label linear / kNN / 5-labels-per-class linear, the last a mean of 3 label
    draws; chosen on a validation split, 1,000 of the training digits with probes fitted on
    the other 3,000; 1 thread on a shared 2-core machine). Raw pixels: 0.881 / 0.919 / 0.646
    (test 0.895 / 0.936 / 0.634). Random init, width 16: global pooling (64 features) 0.495 /
    0.420 / 0.247; 2x2 (256) 0.700 / 0.688 / 0.377; 4x4 (1024) 0.884 / 0.788 / 0.524;
    multiscale 0.725 (pool 1) and 0.809 (pool 2) linear; width 32, global pooling 0.644.
    SimCLR, 15 epochs at batch 64 (940 steps), lr 0.05 cosine, seed 0:

    =============================  =====================  ==============
    readout, views, projector      val                    train seconds
    =============================  =====================  ==============
    pool 1, old views, 64-128-64   0.941 / 0.874 / 0.734  146
    pool 1, new views              0.954 / 0.918 / 0.823  239
    pool 2, old views, 256-512-64  0.960 / 0.919 / 0.782  238
    pool 2, new views, 256-512-64  0.970 / 0.955 / 0.870  194
    pool 2, new views, 256-128-64  0.963 / 0.954 / 0.869  173
    pool 4, new views, 1024-512    0.974 / 0.964 / 0.867  233
    =============================  =====================  ==============

    The default (pool 2, new views of :class:`~fedssl.ssl_core.augmentations.ImageAugment`,
    projector 256-256-64), seeds 0-2: val 0.971 +- 0.005 / 0.951 +- 0.005 / 0.869 +- 0.006,
    test 0.977 +- 0.002 / 0.952 +- 0.003 / 0.881 +- 0.007, 140-283 s each (load varied);
    8 epochs (470 steps, 111 s): val 0.968 / 0.943 / 0.855. Global pooling kept 64 numbers
    of a 7x7x64 map and threw away where on the digit a stroke is; 2x2 keeps it at 4x the
    features and the same step cost, and 4x4 adds little on 5 labels for 4x more features.
    The old encoder and views already beat the raw pixels given 940 steps (the 20-epoch
    batch-256 rows of ``benchmarks/quality.py`` take 320); readout and views add 3 / 8 / 14
    points. Of the DP-capable objectives at the same budget: ``infonce-public`` (procedural
    negatives) 0.969 / 0.946 / 0.882 (524 s on a machine at load 7), BYOL 0.831 / 0.767 /
    0.521 (below the raw pixels: it needs more steps). Test-split numbers of every row:
    ``benchmarks/results/image_encoder_mnist5k.jsonl``.

    Example:
        >>> enc = ResNetEncoder2d(in_channels=1, width=16)
        >>> enc(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 64])
        >>> ResNetEncoder2d(in_channels=1, width=16, pool=2)(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 256])
    """

    def __init__(
        self, in_channels: int = 1, width: int = 16, feature_dim: int | None = None,
        ws: bool = True, pool: int = 1, multiscale: bool = False,
    ) -> None:
        super().__init__()
        if pool < 1:
            raise ValueError(f"pool must be >= 1, got {pool}")
        w = width
        self.stem = nn.Sequential(
            (WSConv2d if ws else nn.Conv2d)(in_channels, w, 3, padding=1, bias=False),
            nn.GroupNorm(_groups(w), w),
            nn.ReLU(),
        )
        self.stages = nn.Sequential(
            _BasicBlock(w, w, 1, ws), _BasicBlock(w, 2 * w, 2, ws),
            _BasicBlock(2 * w, 4 * w, 2, ws),
        )
        self.pool = pool
        self.multiscale = multiscale
        self.feature_dim = 4 * w * pool * pool + (3 * w if multiscale else 0)
        if feature_dim is not None and feature_dim != self.feature_dim:
            raise ValueError(f"ResNetEncoder2d width {w}, pool {pool}, multiscale "
                             f"{multiscale} gives feature_dim {self.feature_dim}")
        #: the constructor's arguments: recorded beside exported weights (encoder_file.py)
        #: (a record without ``pool`` / ``multiscale``, written before they existed, rebuilds
        #: with their defaults: the globally pooled encoder it was)
        self.arch_kwargs = {"in_channels": in_channels, "width": width, "ws": ws,
                            "pool": pool, "multiscale": multiscale}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features of a batch: the last stage pooled to the readout grid (plus the pooled earlier
        stages with ``multiscale``).

        Args:
            x: ``(N, C, H, W)`` records.

        Returns:
            ``(N, feature_dim)`` features.
        """
        h = self.stem(x)
        pooled = []
        for i, stage in enumerate(self.stages):
            h = stage(h)
            if self.multiscale and i < len(self.stages) - 1:
                pooled.append(h.mean(dim=(-2, -1)))
        if self.pool == 1:
            last = h.mean(dim=(-2, -1))
        else:
            last = F.adaptive_avg_pool2d(h, self.pool).flatten(1)
        return torch.cat([*pooled, last], dim=1) if pooled else last

    def last_block(self) -> nn.Module:
        """The last residual stage (trained by the ``norm-bias-last`` trainable rule)."""
        return self.stages[-1]


#: readout of new image encoders (``ResNetEncoder2d(pool=...)``): a 2x2 grid of the last
#: stage. Measured on real MNIST 28x28 (mnist5k), see :class:`ResNetEncoder2d`.
IMAGE_POOL = 2


def build_encoder(input_shape: tuple[int, ...], width: int | None = None, ws: bool = True,
                  pool: int | None = None) -> nn.Module:
    """Pick the encoder for a record shape: ``(C, L)`` -> 1-D CNN, ``(C, H, W)`` -> ResNet
    (weight-standardised convolutions unless ``ws=False``; readout grid ``pool``, default
    :data:`IMAGE_POOL`; ``pool=1`` is the global-average-pooled ResNet of older runs).

    Args:
        input_shape: one record's shape.
        width: the encoder's width (default 64 for signals, 16 for images).
        ws: weight-standardised convolutions.
        pool: the ResNet's readout grid.

    Returns:
        A new encoder.

    Raises:
        ValueError: a shape that is neither.
    """
    if len(input_shape) == 2:
        return ConvEncoder1d(in_channels=input_shape[0], width=width or 64, ws=ws)
    if len(input_shape) == 3:
        return ResNetEncoder2d(in_channels=input_shape[0], width=width or 16, ws=ws,
                               pool=IMAGE_POOL if pool is None else pool)
    raise ValueError(f"no encoder for records of shape {input_shape}")
