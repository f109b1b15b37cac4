"""Training augmentation: albumentations for 2D RGB/grey patches (plus H&E stain jitter in HED
space), MONAI array transforms for 3D volumes. Every pipeline is deterministic given a seed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from medray.config.base import MedrayModel


class AugmentConfig(MedrayModel):
    """Which augmentations to apply and how strongly; a probability of 0 turns a step off."""

    enabled: bool = Field(True, description="False: the augment function returns its input unchanged")
    hflip: float = Field(0.5, ge=0, le=1, description="Probability of a horizontal flip (2D)")
    vflip: float = Field(0.5, ge=0, le=1, description="Probability of a vertical flip (2D)")
    rot90: float = Field(0.5, ge=0, le=1, description="Probability of a random 90-degree rotation (2D)")
    affine: float = Field(0.0, ge=0, le=1, description="Probability of a random affine (shift/scale/rotate) (2D)")
    shift_limit: float = Field(0.0625, ge=0, le=0.5, description="Affine shift, fraction of the side")
    scale_limit: float = Field(0.1, ge=0, lt=1, description="Affine zoom range: 1 +- this")
    rotate_limit: float = Field(15.0, ge=0, le=180, description="Affine rotation range in degrees")
    brightness_contrast: float = Field(0.3, ge=0, le=1, description="Probability of brightness/contrast jitter")
    brightness_limit: float = Field(0.1, ge=0, le=1, description="Brightness change, fraction of max")
    contrast_limit: float = Field(0.1, ge=0, le=1, description="Contrast change factor range 1 +- this")
    hed_jitter: float = Field(0.5, ge=0, le=1, description="Probability of H&E stain jitter (RGB only)")
    hed_sigma: float = Field(0.05, ge=0, le=1, description="HED stain scale jitter: factor 1 +- sigma")
    hed_bias: float = Field(0.002, ge=0, le=1,
                            description="HED stain shift: +- bias (skimage units; 0.01 darkens white ~13%)")
    blur: float = Field(0.0, ge=0, le=1, description="Probability of a Gaussian blur")
    blur_sigma: tuple[float, float] = Field((0.1, 1.0), description="Gaussian blur sigma range (pixels)")
    noise: float = Field(0.0, ge=0, le=1, description="Probability of Gaussian noise")
    noise_std: tuple[float, float] = Field((0.01, 0.05), description="Noise std range, fraction of max value")
    flip3d: float = Field(0.5, ge=0, le=1, description="Probability of a flip per spatial axis (3D)")
    rotate90_3d: float = Field(0.5, ge=0, le=1, description="Probability of a 90-degree in-plane rotation (3D)")
    noise3d: float = Field(0.2, ge=0, le=1, description="Probability of Gaussian noise (3D)")
    noise3d_std: float = Field(0.05, ge=0, description="Gaussian noise std (3D, intensity units after scaling)")
    intensity_scale3d: float = Field(0.3, ge=0, le=1, description="Probability of intensity scaling (3D)")
    intensity_factor3d: float = Field(0.1, ge=0, lt=1, description="Intensity scale range: 1 +- this (3D)")


def hed_jitter_image(image: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Scale (alpha) and shift (beta) the three HED stain channels of an RGB uint8 image."""
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(image)
    hed = hed * alpha.reshape(1, 1, 3) + beta.reshape(1, 1, 3)
    rgb = hed2rgb(hed)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def _hed_transform(sigma: float, bias: float, p: float):
    import albumentations as A

    class HEDJitter(A.ImageOnlyTransform):
        """H&E stain augmentation in HED space (Tellez et al. 2018); skipped for non-RGB images."""

        def __init__(self, sigma: float = 0.05, bias: float = 0.01, p: float = 0.5):
            super().__init__(p=p)
            self.sigma = sigma
            self.bias = bias

        def get_params(self) -> dict[str, Any]:
            rng = self.random_generator
            return {"alpha": rng.uniform(1 - self.sigma, 1 + self.sigma, 3),
                    "beta": rng.uniform(-self.bias, self.bias, 3)}

        def apply(self, img: np.ndarray, alpha: np.ndarray = None, beta: np.ndarray = None, **params):
            if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
                return img
            return hed_jitter_image(img, alpha, beta)

        def get_transform_init_args_names(self) -> tuple[str, ...]:
            return ("sigma", "bias")

    return HEDJitter(sigma=sigma, bias=bias, p=p)


class Augment2D:
    """Callable HWC uint8 → HWC uint8 (same shape); ``reseed`` restarts its random stream."""

    def __init__(self, cfg: AugmentConfig, seed: int | None = None) -> None:
        import albumentations as A

        self.cfg = cfg
        steps = [
            A.HorizontalFlip(p=cfg.hflip),
            A.VerticalFlip(p=cfg.vflip),
            A.RandomRotate90(p=cfg.rot90),
            A.Affine(translate_percent=(-cfg.shift_limit, cfg.shift_limit),
                     scale=(1 - cfg.scale_limit, 1 + cfg.scale_limit),
                     rotate=(-cfg.rotate_limit, cfg.rotate_limit), border_mode=4, p=cfg.affine),
            A.RandomBrightnessContrast(brightness_limit=cfg.brightness_limit,
                                       contrast_limit=cfg.contrast_limit, p=cfg.brightness_contrast),
            _hed_transform(cfg.hed_sigma, cfg.hed_bias, cfg.hed_jitter),
            A.GaussianBlur(blur_limit=0, sigma_limit=cfg.blur_sigma, p=cfg.blur),
            A.GaussNoise(std_range=cfg.noise_std, p=cfg.noise),
        ]
        self.compose = A.Compose([s for s in steps if s.p > 0], seed=seed)

    def reseed(self, seed: int) -> None:
        self.compose.set_random_seed(int(seed))

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if not self.cfg.enabled:
            return image
        return self.compose(image=np.ascontiguousarray(image))["image"]


class Augment3D:
    """Callable CDHW float → CDHW float32 (same shape: rotations only in the square H-W plane)."""

    def __init__(self, cfg: AugmentConfig, seed: int | None = None) -> None:
        from monai.transforms import (Compose, RandFlip, RandGaussianNoise, RandRotate90,
                                      RandScaleIntensity)

        self.cfg = cfg
        steps = [RandFlip(prob=cfg.flip3d, spatial_axis=axis) for axis in (0, 1, 2)]
        steps += [
            RandRotate90(prob=cfg.rotate90_3d, max_k=3, spatial_axes=(1, 2)),
            RandGaussianNoise(prob=cfg.noise3d, mean=0.0, std=cfg.noise3d_std),
            RandScaleIntensity(factors=cfg.intensity_factor3d, prob=cfg.intensity_scale3d),
        ]
        self.compose = Compose(steps)
        self.compose.set_random_state(seed=seed)

    def reseed(self, seed: int) -> None:
        self.compose.set_random_state(seed=int(seed) % (2**32))

    def __call__(self, volume: np.ndarray) -> np.ndarray:
        if not self.cfg.enabled:
            return volume
        vol = np.asarray(volume, dtype=np.float32)
        if vol.shape[-1] != vol.shape[-2]:  # a 90-degree turn of a non-square plane changes the shape
            rot = self.compose.transforms[3]
            rot_prob, rot.prob = rot.prob, 0.0
            try:
                out = self.compose(vol)
            finally:
                rot.prob = rot_prob
        else:
            out = self.compose(vol)
        return np.ascontiguousarray(np.asarray(out, dtype=np.float32))


def build_augment_2d(cfg: AugmentConfig, seed: int | None = None) -> Augment2D:
    """Augmentation for 2D images (HWC uint8 in, same shape/dtype out)."""
    return Augment2D(cfg, seed)


def build_augment_3d(cfg: AugmentConfig, seed: int | None = None) -> Augment3D:
    """Augmentation for volumes (CDHW float in, CDHW float32 out)."""
    return Augment3D(cfg, seed)
