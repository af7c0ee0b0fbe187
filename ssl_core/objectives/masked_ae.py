"""Masked autoencoding on the project's CNN encoders: hide patches of the input, reconstruct them.

A convolutional masked autoencoder in the style of SimMIM (Xie et al., "SimMIM: A Simple
Framework for Masked Image Modeling", CVPR 2022: the masked input goes through the *whole*
encoder, a light head predicts the raw masked pixels) and of context encoders (Pathak et al.,
"Context Encoders: Feature Learning by Inpainting", CVPR 2016: a convolutional encoder, a
bottleneck vector and a decoder that fills in the hidden region), with MAE's high mask ratio
(He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022) and the DP-MAE
recipe of ViP (Yu et al., "ViP: A Differentially Private Foundation Model for Computer
Vision", ICML 2024: mask ratio 0.75, a synthetic warm start, large batches).

What: record ``x`` (``(C, L)`` signal or ``(C, H, W)`` image) is cut into patches along its
length/height/width (:func:`~fedssl.ssl_core.vit.choose_patch_size`'s sizes: 2 samples of a
length-40 signal, 2x2 pixels of an 8x8 image, 4x4 of a 28x28 one); a random ``mask_ratio`` of
them is set to 0 (the mean of the standardised data). The encoder is the SAME network the
contrastive methods train (:func:`~fedssl.ssl_core.encoders.build_encoder`: the GroupNorm +
weight-standardised 1-D CNN, the ResNet with its 2x2 readout), so its features, exported
file, warm starts and fine-tuning are those of every other CNN run. A light MLP decoder
(Linear - LayerNorm - ReLU - Linear, zero-initialised output) maps the encoder's *pooled
feature vector* to the whole record (``decoder="pooled"``, the default; ``decoder="map"``
is SimMIM's head instead, one Linear per position of the last feature map predicting the
pixels under it), and the loss is the mean squared error on the masked entries only::

    L(x) = 1/|M| sum_{j in M} (D(f(x * (1 - m)))_j - x_j)^2,    m = 1 on the masked set M

Why (issue 21): the ViT MAE (:mod:`~fedssl.ssl_core.objectives.mae`) did not learn under DP
(linear probe below its own random init on digits and MNIST-1D); it trains a different, larger
network from scratch, which DP noise hurts most. Here the reconstruction must pass through the
pooled vector that the probes and the fine-tuning read, on the network that already works,
and it can start from the public or synthetic warm start.

What it does, measured (``docs/label-efficiency.md``, "Masked pretraining"; benchmarks/quality.py
rows in ``benchmarks/results/quality_*masked_ae*.json``): a negative result. Under DP (epsilon
8, the MNIST-1D demo scale and digits) it leaves the warm start where it was, as
``infonce-public`` does: equal rows, neither above the warm start. From random init under DP
neither objective learns at that budget. Without DP it is the weaker objective: on MNIST-1D its
frozen probes stay at or fall below random init as its loss falls (the label explains ~8 % of
the per-entry variance there, ~41 % on digits, where it does learn from scratch).

DP contract (record-level DP-SGD with per-record clipping, sensitivity ``C``): record ``i``'s
mask is drawn from a ``torch.Generator`` seeded with a hash of record ``i``'s own view and a
salt the objective draws from its own seeded generator once per optimizer step
(:func:`~fedssl.ssl_core.objectives.mae.per_record_masks`, shared with the ViT MAE): it does not
depend on the record's position in the batch or on any other record. The encoder (GroupNorm,
no batch statistics), the decoder (LayerNorm) and the loss act within one record. So ``l_i``
is a function of record ``i`` (all of its views), the parameters and the salt only:
per-record decomposable. With ``K`` views (augmentation multiplicity) the model is called once
per view and the record's loss is the mean over its views, so all ``K`` views enter the one
clipped gradient row. The sensitivity harness (``tests/privacy/test_sensitivity.py``, both DP
engines) and ``tests/ssl_core/test_masked_ae.py`` check it; a variant whose masks follow batch
positions fails the harness (``tests/ssl_core/test_masked_ae.py``). Views of different batch
sizes are refused (:class:`~fedssl.ssl_core.dp_soundness.DPSoundnessError`): they cannot be the
views of the same records.

Example:
    >>> objective = MaskedAE()
    >>> model = objective.build_model((1, 40), width=16)
    >>> objective.per_record_loss(model, [torch.randn(5, 1, 40)]).shape
    torch.Size([5])
    >>> model.encoder(torch.randn(5, 1, 40)).shape  # the contrastive methods' 1-D CNN
    torch.Size([5, 128])
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fedssl.ssl_core.dp_soundness import DPSoundnessError
from fedssl.ssl_core.encoders import ConvEncoder1d, ResNetEncoder2d, build_encoder
from fedssl.ssl_core.heads import mlp
from fedssl.ssl_core.objectives.base import Objective
from fedssl.ssl_core.objectives.mae import per_record_masks
from fedssl.ssl_core.vit import choose_patch_size

#: patches along each axis the patch size aims at (``choose_patch_size``): 20 segments of a
#: length-40 signal, 4x4 patches of an 8x8 image, 7x7 of a 28x28 one
_TARGET_TOKENS = {2: 20, 3: 8}
#: decoders: an MLP from the pooled feature vector (what the probes read) to the whole record,
#: or a per-position Linear on the encoder's last feature map (SimMIM's one-layer head)
DECODERS = ("pooled", "map")


def feature_map(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The encoder's last feature map before pooling: ``(N, F, L')`` of the 1-D CNN,
    ``(N, F, H', W')`` of the ResNet.

    Args:
        encoder: a 1-D CNN or ResNet encoder.
        x: ``(N, ...)`` records.

    Returns:
        The feature map.

    Raises:
        TypeError: another kind of encoder.
    """
    if isinstance(encoder, ConvEncoder1d):
        return encoder.body(x)
    if isinstance(encoder, ResNetEncoder2d):
        return encoder.stages(encoder.stem(x))
    raise TypeError(f"no feature map for {type(encoder).__name__}")


class MaskedAENet(nn.Module):
    """CNN encoder + MLP decoder; ``forward(x, salt)`` returns the per-record loss ``(N,)``.

    Args:
        input_shape: ``(C, L)`` or ``(C, H, W)``.
        width: encoder width (the encoder's default for the shape if None).
        mask_ratio: fraction of patches hidden, in (0, 1).
        hidden: the decoder's hidden width.
        patch_size: patch length along each spatial axis (default: from the record size).
        decoder: one of :data:`DECODERS`.
    """

    def __init__(self, input_shape: tuple[int, ...], width: int | None = None,
                 mask_ratio: float = 0.75, hidden: int = 256,
                 patch_size: int | None = None, decoder: str = "pooled") -> None:
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if len(input_shape) not in _TARGET_TOKENS:
            raise ValueError(f"masked-ae takes (C, L) signals or (C, H, W) images, got "
                             f"records of shape {tuple(input_shape)}")
        self.input_shape = tuple(input_shape)
        spatial = self.input_shape[1:]
        self.patch = tuple(patch_size or choose_patch_size(s, _TARGET_TOKENS[len(input_shape)])
                           for s in spatial)
        self.grid = tuple(math.ceil(s / p) for s, p in zip(spatial, self.patch))
        self.num_patches = math.prod(self.grid)
        self.num_masked = min(self.num_patches - 1, max(1, round(mask_ratio * self.num_patches)))
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        self.decoder_kind = decoder
        self.encoder = build_encoder(self.input_shape, width)
        if decoder == "pooled":
            self.decoder = mlp(self.encoder.feature_dim, hidden, math.prod(self.input_shape))
            last = self.decoder[-1]
        else:  # one Linear per position of the last feature map -> the pixels it covers
            with torch.no_grad():
                fmap = feature_map(self.encoder, torch.zeros(1, *self.input_shape))
            self.map_grid = tuple(fmap.shape[2:])
            self.scale = tuple(math.ceil(s / g) for s, g in zip(spatial, self.map_grid))
            last = self.decoder = nn.Linear(fmap.shape[1],
                                            self.input_shape[0] * math.prod(self.scale))
        # zero-initialised output: the first prediction is 0, the mean of standardised data
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def pixel_mask(self, x: torch.Tensor, salt: int) -> torch.Tensor:
        """1 on each record's masked entries, ``(N, 1, *spatial)`` (the same on every
        channel); record ``i``'s mask depends only on ``x[i]`` and ``salt``.

        Args:
            x: ``(N, ...)`` records.
            salt: the step's salt.

        Returns:
            The mask.
        """
        _, masked = per_record_masks(x, self.num_patches, self.num_masked, salt)
        m = torch.zeros(len(x), self.num_patches, device=x.device)
        m.scatter_(1, masked, 1.0)
        m = m.reshape(len(x), 1, *self.grid)
        for axis, p in enumerate(self.patch):
            m = m.repeat_interleave(p, dim=2 + axis)
        crop = (slice(None), slice(None), *(slice(0, s) for s in self.input_shape[1:]))
        return m[crop]

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's reconstruction of (masked) records ``x``, shaped like ``x``.

        Args:
            x: ``(N, ...)`` records, masked entries zeroed.

        Returns:
            The reconstruction.
        """
        if self.decoder_kind == "pooled":
            return self.decoder(self.encoder(x)).reshape(x.shape)
        fmap = feature_map(self.encoder, x)  # (N, F, *map_grid)
        return self.fold(self.decoder(fmap.flatten(2).transpose(1, 2)))

    def fold(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-position predictions ``(N, T, C * prod(scale))`` (positions of the feature map
        in row-major order, each a ``C x scale`` block) -> records ``(N, *input_shape)``.

        Args:
            tokens: the decoder's per-position predictions.

        Returns:
            The records, cropped to the input shape.
        """
        n, c = len(tokens), self.input_shape[0]
        g, k = self.map_grid, self.scale
        if len(g) == 1:
            out = tokens.reshape(n, g[0], c, k[0]).permute(0, 2, 1, 3).reshape(n, c, -1)
            return out[..., :self.input_shape[-1]]
        out = tokens.reshape(n, g[0], g[1], c, k[0], k[1]).permute(0, 3, 1, 4, 2, 5)
        out = out.reshape(n, c, g[0] * k[0], g[1] * k[1])
        return out[..., :self.input_shape[-2], :self.input_shape[-1]]

    def forward(self, x: torch.Tensor, salt: int = 0) -> torch.Tensor:
        """Per-record masked reconstruction error: squared error on the masked entries over their
        number.

        Args:
            x: ``(N, ...)`` records.
            salt: the step's salt (seeds the masks).

        Returns:
            ``(N,)`` losses.
        """
        m = self.pixel_mask(x, salt)
        pred = self.predict(x * (1 - m))
        err = (pred - x).pow(2) * m  # masked entries only
        dims = tuple(range(1, x.dim()))
        return err.sum(dim=dims) / (m.expand_as(x).sum(dim=dims))


class MaskedAE(Objective):
    """Masked autoencoding on the CNN encoder (per-record decomposable).

    Args:
        mask_ratio: fraction of patches masked (0.75, MAE's and ViP's).
        hidden: decoder hidden width.
        patch_size: patch length per axis (default: from the record size).
        decoder: ``"pooled"`` (MLP from the pooled features) or ``"map"`` (per-position
            Linear on the last feature map).
        seed: seed of the generator that salts the per-record masks.
    """

    name = "masked-ae"
    num_views = 1
    decomposable = True
    needs_predictor = False
    #: any number K >= 1 of views per record, each with its own mask, clipped together
    multi_view = True

    def __init__(self, mask_ratio: float = 0.75, hidden: int = 256,
                 patch_size: int | None = None, decoder: str = "pooled", seed: int = 0) -> None:
        self.decoder = decoder
        self.mask_ratio = mask_ratio
        self.hidden = hidden
        self.patch_size = patch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.salt = self._draw()

    def _draw(self) -> int:
        return int(torch.randint(0, 2**62, (1,), generator=self.generator))

    def build_model(self, input_shape: tuple[int, ...], width: int | None = None
                    ) -> MaskedAENet:
        """The contrastive methods' encoder for the shape + the MLP decoder."""
        return MaskedAENet(input_shape, width, self.mask_ratio, self.hidden, self.patch_size,
                           self.decoder)

    def start_round(self, model: nn.Module) -> None:
        """Fresh mask salt for a new local training call."""
        self.salt = self._draw()

    def after_step(self, model: nn.Module) -> None:
        """Fresh mask salt after every optimizer step (new masks for the same records)."""
        self.salt = self._draw()

    def per_record_loss(self, model: nn.Module, views: list[torch.Tensor]) -> torch.Tensor:
        """Mean over the record's views of its masked reconstruction error; one model call
        per view (each view's mask is seeded by that view and the step's salt)."""
        if not views:
            raise ValueError(f"{self.name} needs at least 1 view per record")
        if len({len(v) for v in views}) != 1:
            raise DPSoundnessError(
                f"{self.name}: views of {sorted({len(v) for v in views})} records; every view "
                "must hold the same records in the same order (one gradient row per record)")
        losses = [model(v, salt=self.salt) for v in views]
        return torch.stack(losses).mean(dim=0)
