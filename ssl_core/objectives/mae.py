"""MAE: masked-patch reconstruction with a small ViT, for images and for 1-D signals.

He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022 (ViT encoder:
Dosovitskiy et al., ICLR 2021; see :mod:`fedssl.ssl_core.vit`).

A record ``x`` is cut into ``T`` patches (``p x p`` squares of an image, length-``p`` segments
of a signal ``(C, L)``; the patch size is picked from the record size). A random subset ``V``
of ``T - round(rho T)`` patches stays visible (``rho`` = ``mask_ratio``); the encoder sees only
``V``; a light transformer decoder gets the encoded visible tokens plus a learned mask token at
every masked position (each with its fixed position code) and predicts the masked patches::

    L(x) = 1/|M| sum_{j in M} mean((x_hat_j - x_j)^2),     M = {1..T} \\ V

with ``x_j`` optionally normalised per patch (``norm_pix_loss``, MAE Sec. 4). The evaluated and
exported encoder is the ViT applied to *all* patches, mean-pooled. Departures from the paper for
small CPU models trained with the trainer's SGD: no class token (mean pooling, which MAE reports
as equally good), and a zero-initialised prediction head (initial loss ~1 on standardised data;
without it SGD at lr >= 0.1 diverged on MNIST-1D).

Per-record masks and DP soundness. Record ``i``'s mask is a random permutation drawn from a
``torch.Generator`` seeded with a hash of record ``i``'s own view (its float32 bits) and a
*salt* that the objective draws from its own seeded generator once per optimizer step (in
:meth:`MAE.start_round` / :meth:`MAE.after_step`). The mask thus depends only on the record
and the objective's generator, never on the record's position in the batch or on the other
records: adding or removing another record leaves it unchanged. Every other operation
(patching, attention, LayerNorm, the loss) acts within one record, so record ``i``'s loss is a
function of record ``i`` alone: per-record decomposable, and DP-SGD with per-record clipping is
sound. The network has only ``nn.Linear``, ``nn.LayerNorm`` and an ``nn.Embedding`` (the mask
token), all with Opacus hooks-mode grad samplers, and the whole loss is computed in the
model's ``forward`` so that the GradSampleModule wrapper sees every use.

Example:
    >>> mae = MAE()
    >>> model = mae.build_model((1, 8, 8))
    >>> mae.per_record_loss(model, [torch.randn(5, 1, 8, 8)]).shape
    torch.Size([5])
    >>> model.encoder(torch.randn(5, 1, 8, 8)).shape  # all patches visible
    torch.Size([5, 64])
    >>> mae.build_model((1, 40)).encoder.feature_dim
    64
"""

from __future__ import annotations

import torch
from torch import nn

from fedssl.ssl_core.objectives.base import Objective
from fedssl.ssl_core.vit import Block, ViTEncoder, default_heads, init_weights, sincos_pos_embed

_P = 2**31 - 1  # prime modulus of the record hash
_coefficients: dict[tuple[int, str], torch.Tensor] = {}


def record_keys(x: torch.Tensor) -> list[int]:
    """A 31-bit hash of each record's float32 bits (a universal hash ``sum_d b_d r_d mod p``
    with fixed random ``r``); row ``i`` depends on ``x[i]`` only.

    Args:
        x: ``(N, ...)`` records.

    Returns:
        One key per record.
    """
    bits = x.detach().reshape(len(x), -1).float().contiguous().view(torch.int32).to(torch.int64)
    bits = (bits & 0xFFFFFFFF) % _P
    key = (bits.shape[1], str(x.device))
    if key not in _coefficients:
        gen = torch.Generator().manual_seed(0x5EED)
        _coefficients[key] = torch.randint(1, _P, (bits.shape[1],), generator=gen).to(x.device)
    return (((bits * _coefficients[key]) % _P).sum(dim=1) % _P).tolist()


def per_record_masks(
    x: torch.Tensor, num_patches: int, num_masked: int, salt: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Visible and masked patch indices, ``(N, T - num_masked)`` and ``(N, num_masked)``.

    Record ``i``'s indices are a ``torch.randperm`` from a generator seeded with
    ``hash(x[i]) * phi + salt``: independent of the batch it sits in.

    Args:
        x: ``(N, ...)`` records.
        num_patches: ``T``.
        num_masked: how many patches each record masks.
        salt: the step's salt.

    Returns:
        The visible and the masked indices.
    """
    gen = torch.Generator()
    perms = [
        torch.randperm(num_patches, generator=gen.manual_seed(
            (k * 0x9E3779B97F4A7C15 + salt) % 2**63))
        for k in record_keys(x)
    ]
    perm = torch.stack(perms).to(x.device) if perms else torch.zeros(
        0, num_patches, dtype=torch.long, device=x.device)
    keep = num_patches - num_masked
    return perm[:, :keep], perm[:, keep:]


class MAEDecoder(nn.Module):
    """Light transformer decoder: visible tokens + mask tokens -> masked patches' pixels."""

    def __init__(self, enc_dim: int, grid: tuple[int, ...], patch_dim: int, dim: int = 32,
                 depth: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(enc_dim, dim)
        self.mask_token = nn.Embedding(1, dim)  # a "bare parameter" Opacus can clip per record
        self.register_buffer("pos", sincos_pos_embed(grid, dim), persistent=False)
        self.blocks = nn.Sequential(*[Block(dim, default_heads(dim, heads)) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, patch_dim)
        init_weights(self)
        # zero-initialised output: the first prediction is 0 (the mean of standardised data), so
        # the initial loss is ~1 and plain SGD with momentum (the trainer's optimizer) is stable
        nn.init.zeros_(self.head.weight)

    def forward(self, latent: torch.Tensor, keep: torch.Tensor, masked: torch.Tensor
                ) -> torch.Tensor:
        """Predicted patches ``(N, M, patch_dim)`` at the ``masked`` positions. Tokens need not
        be unshuffled: attention is permutation-equivariant and positions are in the codes.

        Args:
            latent: the encoder's tokens of the visible patches.
            keep: ``(N, T - M)`` visible patch indices.
            masked: ``(N, M)`` masked patch indices.

        Returns:
            The predictions.
        """
        vis = self.embed(latent) + self.pos[keep]
        mask = self.mask_token(torch.zeros_like(masked)) + self.pos[masked]
        out = self.head(self.norm(self.blocks(torch.cat([vis, mask], dim=1))))
        return out[:, keep.shape[1]:]


class MaskedAutoencoder(nn.Module):
    """ViT encoder + MAE decoder; ``forward(x, salt)`` returns the per-record loss ``(N,)``."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        decoder_dim: int | None = None,
        decoder_depth: int = 2,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = False,
        patch_size: int | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        self.input_shape = tuple(input_shape)
        self.encoder = ViTEncoder(input_shape, dim, depth, heads, patch_size=patch_size)
        patches = self.encoder.patchify
        self.decoder = MAEDecoder(dim, patches.grid, patches.patch_dim,
                                  decoder_dim or max(8, dim // 2), decoder_depth, heads)
        t = patches.num_patches
        self.num_masked = min(t - 1, max(1, round(mask_ratio * t)))
        self.norm_pix_loss = norm_pix_loss

    def masks(self, x: torch.Tensor, salt: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This model's per-record (visible, masked) patch indices for a batch.

        Args:
            x: ``(N, ...)`` records.
            salt: the step's salt.

        Returns:
            The visible and masked patch indices.
        """
        return per_record_masks(x, self.encoder.num_patches, self.num_masked, salt)

    def forward(self, x: torch.Tensor, salt: int = 0) -> torch.Tensor:
        """Per-record MAE loss: mean squared error of the predicted masked patches (normalised per
        patch with ``norm_pix_loss``).

        Args:
            x: ``(N, ...)`` records.
            salt: the step's salt (seeds the masks).

        Returns:
            ``(N,)`` losses.
        """
        keep, masked = self.masks(x, salt)
        pred = self.decoder(self.encoder.tokens(x, keep), keep, masked)
        target = torch.gather(self.encoder.patchify(x), 1,
                              masked[..., None].expand(-1, -1, pred.shape[-1]))
        if self.norm_pix_loss:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        return (pred - target).pow(2).mean(dim=(1, 2))


class MAE(Objective):
    """Masked autoencoding (MAE) for images and signals, chosen by the record shape.

    Args:
        mask_ratio: fraction of patches masked (MAE's 0.75 by default, for both modalities).
        norm_pix_loss: reconstruct per-patch normalised pixels.
        dim, depth, heads: ViT encoder size (``width`` in :meth:`build_model` overrides ``dim``).
        decoder_dim, decoder_depth: decoder size (``dim // 2`` and 2 blocks by default).
        seed: seed of the generator that salts the per-record masks.
    """

    name = "mae"
    num_views = 1
    decomposable = True
    needs_predictor = False

    def __init__(
        self,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = False,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        decoder_dim: int | None = None,
        decoder_depth: int = 2,
        seed: int = 0,
    ) -> None:
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.dim, self.depth, self.heads = dim, depth, heads
        self.decoder_dim, self.decoder_depth = decoder_dim, decoder_depth
        self.generator = torch.Generator().manual_seed(seed)
        self.salt = self._draw()

    def _draw(self) -> int:
        return int(torch.randint(0, 2**62, (1,), generator=self.generator))

    def build_model(self, input_shape: tuple[int, ...], width: int | None = None
                    ) -> MaskedAutoencoder:
        """ViT-MAE for ``(C, L)`` signals or ``(C, H, W)`` images; ``width`` is the ViT dim."""
        return MaskedAutoencoder(
            input_shape, dim=width or self.dim, depth=self.depth, heads=self.heads,
            decoder_dim=self.decoder_dim, decoder_depth=self.decoder_depth,
            mask_ratio=self.mask_ratio, norm_pix_loss=self.norm_pix_loss,
        )

    def start_round(self, model: nn.Module) -> None:
        """Fresh mask salt for a new local training call."""
        self.salt = self._draw()

    def after_step(self, model: nn.Module) -> None:
        """Fresh mask salt after every optimizer step (new masks for the same records)."""
        self.salt = self._draw()

    def per_record_loss(self, model: nn.Module, views: list[torch.Tensor]) -> torch.Tensor:
        """The model's loss on the first view, masks salted by the step."""
        return model(views[0], salt=self.salt)
