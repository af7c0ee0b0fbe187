"""Stochastic augmentations that make the views of an SSL objective.

Both augmenters work on whole batches of tensors (no per-record Python loop) and draw every
random number from an explicit ``torch.Generator`` so that a run is reproducible from its seed.
Each record's views depend only on that record and the random draws, never on other records of
the batch: this keeps per-record DP sensitivity arguments valid.

Signal augmentations follow the time-series SSL literature (Um et al. 2017, "Data augmentation
of wearable sensor data"; Eldele et al. 2021, TS-TCC): random crop-and-resize, circular shift,
amplitude scaling, jitter (Gaussian noise) and segment masking. Image augmentations follow
SimCLR (Chen et al. 2020) in a form that suits small grey images: random resized crop (area
0.6-1), small rotations (up to 15 degrees) and shifts (up to 10 % of the side),
brightness/contrast jitter, Gaussian noise and cutout (no flips: digits are not
mirror-invariant, and neither are most scans). Until issue 21 the crop area went down to 0.5
and there was no rotation or shift; on real MNIST 28x28 (mnist5k, SimCLR, 15 epochs at batch
64, the 2x2-readout ResNet) the current views raised the 5-labels-per-class linear probe on the
validation split from 0.782 to 0.870 and kNN from 0.919 to 0.955 (full-label linear 0.960 ->
0.970); ``ImageAugment(crop_min=0.5, rotate=0, translate=0)`` gives the old views.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class SignalAugment:
    """Augment 1-D signals of shape ``(N, C, L)``."""

    crop_min: float = 0.7
    max_shift: float = 0.25
    scale: tuple[float, float] = (0.7, 1.3)
    jitter: float = 0.1
    mask_max: float = 0.2

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        n, c, length = x.shape
        dev = x.device

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=gen, device=dev)

        # random crop, resized back to the full length (linear interpolation via grid_sample)
        frac = self.crop_min + (1 - self.crop_min) * rand(n, 1)
        start = (1 - frac) * rand(n, 1)
        pos = torch.linspace(0, 1, length, device=dev)[None, :]
        src = (start + frac * pos) * 2 - 1  # in [-1, 1]
        grid = torch.stack([src, torch.zeros_like(src)], dim=-1)[:, None]  # (N, 1, L, 2)
        out = F.grid_sample(x[:, :, None, :], grid, align_corners=True).squeeze(2)
        # circular shift by a per-record amount
        shifts = ((rand(n) * 2 - 1) * self.max_shift * length).round().long()
        idx = (torch.arange(length, device=dev)[None, :] - shifts[:, None]) % length
        out = torch.gather(out, 2, idx[:, None, :].expand(n, c, length))
        # amplitude scaling and jitter
        lo, hi = self.scale
        out = out * (lo + (hi - lo) * rand(n, 1, 1))
        out = out + self.jitter * torch.randn(out.shape, generator=gen, device=dev)
        # mask one random segment
        seg = (rand(n, 1) * self.mask_max * length).long()
        seg_start = (rand(n, 1) * length).long()
        t = torch.arange(length, device=dev)[None, :]
        mask = (t >= seg_start) & (t < seg_start + seg)
        return out.masked_fill(mask[:, None, :], 0.0)


@dataclass
class ImageAugment:
    """Augment images of shape ``(N, C, H, W)``."""

    crop_min: float = 0.6
    brightness: float = 0.4
    contrast: float = 0.4
    noise: float = 0.1
    cutout: float = 0.3
    #: largest rotation in degrees (uniform in [-rotate, rotate]); 0 = none
    rotate: float = 15.0
    #: largest extra translation as a fraction of the image side; 0 = none
    translate: float = 0.1

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        n, _, h, w = x.shape
        dev = x.device

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=gen, device=dev)

        # random resized crop: area fraction in [crop_min, 1], aspect ratio in [3/4, 4/3]
        area = self.crop_min + (1 - self.crop_min) * rand(n)
        log_ratio = (rand(n) * 2 - 1) * 0.2877  # log(4/3)
        ratio = torch.exp(log_ratio)
        sw = torch.sqrt(area * ratio).clamp(max=1.0)
        sh = torch.sqrt(area / ratio).clamp(max=1.0)
        cx = (1 - sw) * (rand(n) * 2 - 1)
        cy = (1 - sh) * (rand(n) * 2 - 1)
        theta = torch.zeros(n, 2, 3, device=dev)
        if self.rotate or self.translate:
            angle = (rand(n) * 2 - 1) * self.rotate * torch.pi / 180
            cos, sin = torch.cos(angle), torch.sin(angle)
            theta[:, 0, 0], theta[:, 0, 1] = sw * cos, -sh * sin
            theta[:, 1, 0], theta[:, 1, 1] = sw * sin, sh * cos
            cx = cx + (rand(n) * 2 - 1) * 2 * self.translate
            cy = cy + (rand(n) * 2 - 1) * 2 * self.translate
            theta[:, 0, 2], theta[:, 1, 2] = cx, cy
        else:  # the draws and the grid of the augmenter before rotate/translate existed
            theta[:, 0, 0], theta[:, 0, 2] = sw, cx
            theta[:, 1, 1], theta[:, 1, 2] = sh, cy
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, align_corners=False, padding_mode="border")
        # brightness / contrast jitter per record
        b = (rand(n, 1, 1, 1) * 2 - 1) * self.brightness
        c = 1 + (rand(n, 1, 1, 1) * 2 - 1) * self.contrast
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * c + mean + b
        out = out + self.noise * torch.randn(out.shape, generator=gen, device=dev)
        # cutout of one square patch
        size = (rand(n, 1, 1) * self.cutout * min(h, w)).long()
        y0 = (rand(n, 1, 1) * h).long()
        x0 = (rand(n, 1, 1) * w).long()
        yy = torch.arange(h, device=dev)[None, :, None]
        xx = torch.arange(w, device=dev)[None, None, :]
        mask = (yy >= y0) & (yy < y0 + size) & (xx >= x0) & (xx < x0 + size)
        return out.masked_fill(mask[:, None], 0.0)


@dataclass
class MNIST1DAugment:
    """Augment MNIST-1D-like signals ``(N, C, L)`` with the generator's own nuisances.

    MNIST-1D (Greydanus 2020) places a short digit template anywhere in the 40-sample signal
    (circular shift), stretches it, scales it, adds a linear trend and correlated noise. Views
    built from exactly those transforms (and no crop or masking, which often cut the digit
    away) make the invariances SSL should learn; measured here, SimCLR's linear probe on 20k
    records rose from 92.6 % with :class:`SignalAugment` to 97.8 %.
    """

    shift: float = 1.0  # fraction of L; 1.0 = any circular shift
    stretch: tuple[float, float] = (0.8, 1.2)
    amp: tuple[float, float] = (0.8, 1.2)
    shear: float = 0.5
    corr_noise: float = 0.2
    jitter: float = 0.05

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        n, c, length = x.shape
        dev = x.device

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=gen, device=dev)

        t = torch.arange(length, device=dev, dtype=torch.float32)[None, :]
        stretch = self.stretch[0] + (self.stretch[1] - self.stretch[0]) * rand(n, 1)
        offset = (rand(n, 1) * 2 - 1) * self.shift * length
        src = ((t - length / 2) / stretch + length / 2 - offset) % length  # circular resampling
        i0 = src.floor().long() % length
        i1 = (i0 + 1) % length
        w = (src - src.floor())[:, None, :]
        out = (torch.gather(x, 2, i0[:, None].expand(n, c, length)) * (1 - w)
               + torch.gather(x, 2, i1[:, None].expand(n, c, length)) * w)
        out = out * (self.amp[0] + (self.amp[1] - self.amp[0]) * rand(n, 1, 1))
        trend = torch.linspace(-0.5, 0.5, length, device=dev)
        out = out + (rand(n, 1, 1) * 2 - 1) * self.shear * trend
        noise = torch.randn(out.shape, generator=gen, device=dev).reshape(n * c, 1, length)
        kernel = torch.exp(-0.5 * (torch.arange(-4, 5, device=dev, dtype=torch.float32) / 2) ** 2)
        kernel = (kernel / kernel.norm())[None, None]
        noise = F.conv1d(F.pad(noise, (4, 4), mode="circular"), kernel)
        out = out + self.corr_noise * noise.reshape(n, c, length)
        return out + self.jitter * torch.randn(out.shape, generator=gen, device=dev)


def augment_for(input_shape: tuple[int, ...], dataset: str = ""
                ) -> SignalAugment | ImageAugment | MNIST1DAugment:
    """The default augmenter for a record shape (and data set: MNIST-1D has its own).

    Args:
        input_shape: one record's shape, ``(C, L)`` or ``(C, H, W)``.
        dataset: the data set's name.

    Returns:
        A new augmenter.
    """
    if dataset == "mnist1d":
        return MNIST1DAugment()
    return SignalAugment() if len(input_shape) == 2 else ImageAugment()
