"""A small Vision Transformer for images ``(C, H, W)`` and 1-D signals ``(C, L)``, DP-ready.

ViT: Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition at
Scale", ICLR 2021. Fixed sine-cosine positional embeddings and global average pooling follow
He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022.

A record is cut into non-overlapping patches (``p x p`` squares of an image, length-``p``
segments of a signal, all channels together), each patch is linearly embedded, a fixed
sine-cosine position code is added, and pre-norm transformer blocks mix the tokens of *that
record only*. The pooled feature of a record is the mean of its final (LayerNorm'd) tokens.

Built for DP-SGD with Opacus hooks mode: the only trainable layers are ``nn.Linear`` and
``nn.LayerNorm`` (attention is written from Linear layers; ``nn.MultiheadAttention`` has no
grad sampler), there is no BatchNorm and no bare ``nn.Parameter``; positional codes are fixed,
non-persistent buffers held by parameter-free container modules (so they are neither trained,
nor exported, nor flagged by Opacus's "trainable layer with buffers" check).

Example:
    >>> enc = ViTEncoder((1, 28, 28), dim=64, depth=4, heads=4)
    >>> enc.patchify.patch_size, enc.num_patches
    ((4, 4), 49)
    >>> enc(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 64])
    >>> ViTEncoder((1, 40), dim=32)(torch.zeros(3, 1, 40)).shape
    torch.Size([3, 32])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: patches per image side / per signal that :func:`choose_patch_size` aims for
IMAGE_GRID = 8
SIGNAL_TOKENS = 20


def choose_patch_size(side: int, target_tokens: int) -> int:
    """Patch length along one axis: at least 2 and about ``side / target_tokens``, preferring
    a divisor of ``side`` (no padding) when one lies within a factor 2 of that target.

    8 -> 2 (4x4 grid), 28 -> 4 (7x7), 32 -> 4 (8x8), 224 -> 28 with ``target_tokens=8``;
    40 -> 2 (20 segments) with ``target_tokens=20``.

    Args:
        side: the record's length along the axis.
        target_tokens: tokens wanted along it.

    Returns:
        The patch length.
    """
    p = max(2, math.ceil(side / target_tokens))
    if p >= side:
        return max(1, side)
    for q in range(p, min(2 * p, side) + 1):
        if side % q == 0:
            return q
    return p  # no nearby divisor: the record is zero-padded to a multiple of p


def sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer sine-cosine code of integer ``positions`` -> ``(len, dim)``.

    Args:
        positions: integer positions.
        dim: the code's size.

    Returns:
        The codes, float32.
    """
    half = dim // 2
    freq = 1.0 / (10000.0 ** (torch.arange(half, dtype=torch.float64) / max(1, half)))
    ang = positions.to(torch.float64)[:, None] * freq[None, :]
    code = torch.cat([torch.sin(ang), torch.cos(ang)], dim=1)
    if code.shape[1] < dim:  # odd dim: pad one zero column
        code = F.pad(code, (0, dim - code.shape[1]))
    return code.float()


def sincos_pos_embed(grid: tuple[int, ...], dim: int) -> torch.Tensor:
    """Fixed positional code of a 1-D or 2-D token grid (MAE's 2-D sin-cos: half the channels
    encode the row, half the column) -> ``(prod(grid), dim)``.

    Args:
        grid: the token grid, 1-D or 2-D.
        dim: the code's size.

    Returns:
        The codes, one row per token in row-major order.
    """
    if len(grid) == 1:
        return sincos_1d(torch.arange(grid[0]), dim)
    gh, gw = grid
    rows = torch.arange(gh).repeat_interleave(gw)
    cols = torch.arange(gw).repeat(gh)
    half = dim // 2
    return torch.cat([sincos_1d(rows, half), sincos_1d(cols, dim - half)], dim=1)


class Patchify(nn.Module):
    """Cut records into flattened non-overlapping patches ``(N, T, patch_dim)`` (no params).

    Records whose sides are not multiples of the patch size are zero-padded on the right/bottom.
    """

    def __init__(self, input_shape: tuple[int, ...], patch_size: int | None = None) -> None:
        super().__init__()
        self.input_shape = tuple(int(d) for d in input_shape)
        if len(self.input_shape) == 2:
            c, length = self.input_shape
            p = patch_size or choose_patch_size(length, SIGNAL_TOKENS)
            self.patch_size: tuple[int, ...] = (p,)
            self.grid: tuple[int, ...] = (-(-length // p),)
        elif len(self.input_shape) == 3:
            c, h, w = self.input_shape
            ph = patch_size or choose_patch_size(h, IMAGE_GRID)
            pw = patch_size or choose_patch_size(w, IMAGE_GRID)
            self.patch_size = (ph, pw)
            self.grid = (-(-h // ph), -(-w // pw))
        else:
            raise ValueError(f"ViT needs records of shape (C, L) or (C, H, W), got {input_shape}")
        self.channels = c
        self.num_patches = math.prod(self.grid)
        self.patch_dim = c * math.prod(self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Cut ``x`` into patches.

        Args:
            x: ``(N, *input_shape)`` records.

        Returns:
            ``(N, T, patch_dim)`` patches in grid order.
        """
        n, c = x.shape[:2]
        if len(self.patch_size) == 1:
            (p,), (g,) = self.patch_size, self.grid
            x = F.pad(x, (0, g * p - x.shape[-1]))
            # (N, C, g, p) -> (N, g, p, C)
            return x.reshape(n, c, g, p).permute(0, 2, 3, 1).reshape(n, g, p * c)
        (ph, pw), (gh, gw) = self.patch_size, self.grid
        x = F.pad(x, (0, gw * pw - x.shape[-1], 0, gh * ph - x.shape[-2]))
        # (N, C, gh, ph, gw, pw) -> (N, gh, gw, ph, pw, C)
        x = x.reshape(n, c, gh, ph, gw, pw).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(n, gh * gw, ph * pw * c)


class Attention(nn.Module):
    """Multi-head self-attention from two Linear layers (per record: softmax over its tokens)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention over the tokens.

        Args:
            x: ``(N, T, dim)`` tokens.

        Returns:
            ``(N, T, dim)``.
        """
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (N, heads, T, d/heads)
        return self.proj(out.transpose(1, 2).reshape(n, t, d))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + Attn(LN(x))``, then ``x + MLP(LN(x))`` (GELU)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-norm transformer block: attention, then MLP, each with a residual connection.

        Args:
            x: ``(N, T, dim)`` tokens.

        Returns:
            ``(N, T, dim)``.
        """
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def init_weights(module: nn.Module) -> None:
    """MAE's initialisation: Xavier-uniform Linear weights, zero biases, unit LayerNorms.

    Args:
        module: a module of the ViT (apply with ``model.apply(init_weights)``).
    """
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)


def default_heads(dim: int, heads: int = 4) -> int:
    """``heads`` if it divides ``dim``, else the largest divisor of ``dim`` below it.

    Args:
        dim: the token dimension.
        heads: the preferred number of heads.

    Returns:
        The number of heads.
    """
    return max(h for h in range(1, heads + 1) if dim % h == 0)


class ViTEncoder(nn.Module):
    """ViT encoder: patch embedding + fixed sin-cos positions + pre-norm blocks + final LN.

    ``forward(x)`` sees every patch and returns the mean-pooled ``(N, feature_dim)`` feature
    (the representation that is probed and exported); :meth:`tokens` encodes only the patches
    listed in ``keep`` (MAE's visible subset).
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        patch_size: int | None = None,
    ) -> None:
        super().__init__()
        self.patchify = Patchify(input_shape, patch_size)
        self.num_patches = self.patchify.num_patches
        self.embed = nn.Linear(self.patchify.patch_dim, dim)
        self.register_buffer("pos", sincos_pos_embed(self.patchify.grid, dim), persistent=False)
        self.blocks = nn.Sequential(
            *[Block(dim, default_heads(dim, heads), mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.feature_dim = dim
        #: the constructor's arguments: recorded beside exported weights (encoder_file.py)
        self.arch_kwargs = {"input_shape": list(self.patchify.input_shape), "dim": dim,
                            "depth": depth, "heads": heads, "mlp_ratio": mlp_ratio,
                            "patch_size": patch_size}
        init_weights(self)

    def tokens(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Encoded tokens ``(N, K, dim)`` of the patches ``keep`` (``(N, K)`` indices; all
        patches in grid order when None).

        Args:
            x: ``(N, *input_shape)`` records.
            keep: indices of the patches to encode, or None for all.

        Returns:
            The encoded tokens, after the final LayerNorm.
        """
        t = self.embed(self.patchify(x)) + self.pos
        if keep is not None:
            t = torch.gather(t, 1, keep[..., None].expand(-1, -1, t.shape[-1]))
        return self.norm(self.blocks(t))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The record's features: the mean of its encoded tokens.

        Args:
            x: ``(N, *input_shape)`` records.

        Returns:
            ``(N, dim)`` features.
        """
        return self.tokens(x).mean(dim=1)

    def last_block(self) -> nn.Module:
        """The last transformer block (trained by the ``norm-bias-last`` trainable rule)."""
        return self.blocks[-1]
