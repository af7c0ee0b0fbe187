"""Encoders: a 1-D CNN for signals and a small 2-D ResNet for images.

Both use GroupNorm instead of BatchNorm: BatchNorm mixes statistics across the records of a
batch, which breaks per-record gradient clipping under DP-SGD (Opacus refuses it), while
GroupNorm normalises each record on its own. By default every convolution is
weight-standardised (:mod:`fedssl.ssl_core.ws_layers`): GroupNorm + Weight Standardization is
what lets BYOL/SimSiam train without batch statistics instead of collapsing (Richemond et al.
2020). ``ws=False`` gives plain convolutions (with a bias in the 1-D CNN, as before). Both end
in global average pooling and return a ``feature_dim`` vector per record, the representation
evaluated by linear probe and kNN.

ResNet: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
GroupNorm: Wu & He, "Group Normalization", ECCV 2018.
Weight Standardization: Qiao et al., arXiv 1903.10520, 2019.
"""

from __future__ import annotations

import torch
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
        return self.body(x).mean(dim=-1)


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

    Example:
        >>> enc = ResNetEncoder2d(in_channels=1, width=16)
        >>> enc(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 64])
    """

    def __init__(
        self, in_channels: int = 1, width: int = 16, feature_dim: int | None = None,
        ws: bool = True,
    ) -> None:
        super().__init__()
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
        self.feature_dim = 4 * w
        if feature_dim is not None and feature_dim != self.feature_dim:
            raise ValueError(f"ResNetEncoder2d width {w} gives feature_dim {4 * w}")
        #: the constructor's arguments: recorded beside exported weights (encoder_file.py)
        self.arch_kwargs = {"in_channels": in_channels, "width": width, "ws": ws}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean(dim=(-2, -1))


def build_encoder(input_shape: tuple[int, ...], width: int | None = None, ws: bool = True
                  ) -> nn.Module:
    """Pick the encoder for a record shape: ``(C, L)`` -> 1-D CNN, ``(C, H, W)`` -> ResNet
    (weight-standardised convolutions unless ``ws=False``)."""
    if len(input_shape) == 2:
        return ConvEncoder1d(in_channels=input_shape[0], width=width or 64, ws=ws)
    if len(input_shape) == 3:
        return ResNetEncoder2d(in_channels=input_shape[0], width=width or 16, ws=ws)
    raise ValueError(f"no encoder for records of shape {input_shape}")
