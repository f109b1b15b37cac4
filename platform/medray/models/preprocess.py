"""How a model's input is made from raw pixels: one typed record that travels with the model.

``to_tensor`` is the only place pixels become network input, so training, batch scoring and
Serve normalize identically.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import Field, model_validator

from medray.config.base import MedrayModel
from medray.errors import DataError


class Preprocessing(MedrayModel):
    """Input layout and normalization: x = (pixel * scale - mean[c]) / std[c]."""

    spatial_dims: int = Field(2, ge=2, le=3, description="2 for images/patches, 3 for volumes")
    channels: int = Field(3, ge=1, description="Input channels the model expects")
    size: int | tuple[int, ...] = Field(224, description="Input size: int (H=W, or D=H=W) or (H, W) / (D, H, W)")
    mean: list[float] | None = Field(None, description="Per-channel mean after scale (default 0.5 each)")
    std: list[float] | None = Field(None, description="Per-channel std after scale (default 0.5 each)")
    scale: float = Field(1 / 255, gt=0, description="Multiplier applied first (1/255 for uint8 pixels)")
    info: dict[str, Any] = Field(default_factory=dict,
                                 description="How inputs were made: mpp, level, patch size, window preset...")

    @model_validator(mode="after")
    def _check(self) -> "Preprocessing":
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is None:
                object.__setattr__(self, name, [0.5] * self.channels)
            elif len(values) == 1 and self.channels > 1:
                object.__setattr__(self, name, values * self.channels)
            elif len(values) != self.channels:
                raise ValueError(f"{name} has {len(values)} values but channels={self.channels}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be > 0, got {self.std}")
        if isinstance(self.size, tuple) and len(self.size) != self.spatial_dims:
            raise ValueError(f"size {self.size} must have {self.spatial_dims} values for spatial_dims="
                             f"{self.spatial_dims}")
        return self

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial input shape: (H, W) or (D, H, W)."""
        if isinstance(self.size, int):
            return (self.size,) * self.spatial_dims
        return tuple(self.size)


def _affine(prep: Preprocessing, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel multiplier and offset so x * a + b == (x * scale - mean) / std."""
    std = np.asarray(prep.std, np.float32)
    a = (np.float32(prep.scale) / std).astype(np.float32)
    b = (-np.asarray(prep.mean, np.float32) / std).astype(np.float32)
    shape = (1, -1) + (1,) * (ndim - 2)
    return a.reshape(shape), b.reshape(shape)


def _channels_first(arr: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """A view of ``arr`` in NC[D]HW (no copy): NHWC is transposed, a missing channel axis added."""
    if prep.spatial_dims == 2:
        if arr.ndim == 3 and prep.channels == 1:
            return arr[:, None]
        if arr.ndim == 4 and arr.shape[-1] == prep.channels:
            return arr.transpose(0, 3, 1, 2)
        raise DataError(f"expected a batch of shape (N, H, W, {prep.channels})"
                        f"{' or (N, H, W)' if prep.channels == 1 else ''}, got {arr.shape}")
    if arr.ndim == 4 and prep.channels == 1:
        return arr[:, None]
    if arr.ndim == 5 and arr.shape[1] == prep.channels:
        return arr
    raise DataError(f"expected a batch of shape (N, {prep.channels}, D, H, W), got {arr.shape}")


def to_tensor(batch: np.ndarray, prep: Preprocessing) -> torch.Tensor:
    """Raw pixels → normalized float32 contiguous tensor in NC[D]HW.

    2D: NHWC or NHW (grey) → NCHW. 3D: NCDHW (or NDHW for one channel) passed through.
    """
    arr = _channels_first(np.asarray(batch), prep)
    a, b = _affine(prep, arr.ndim)
    out = np.empty(arr.shape, np.float32)
    np.multiply(arr, a, out=out, casting="unsafe")
    out += b
    return torch.from_numpy(out)


def to_device_tensor(batch: np.ndarray, prep: Preprocessing, device: torch.device | str) -> torch.Tensor:
    """``to_tensor`` with the float conversion done on ``device``: raw pixels (uint8) cross to a GPU,
    4× fewer bytes than float32, and NHWC input stays channels-last in memory (what cuDNN prefers).

    Same arithmetic as ``to_tensor`` (float32 ``x * a + b``); on the CPU it is ``to_tensor``.
    """
    device = torch.device(device)
    if device.type == "cpu":
        return to_tensor(batch, prep)
    arr = np.asarray(batch)
    view = _channels_first(arr, prep)  # validates the shape; the transpose is redone on the device
    raw = torch.from_numpy(np.ascontiguousarray(arr)).to(device, non_blocking=True)
    if view.ndim == arr.ndim + 1:
        raw = raw.unsqueeze(1)
    elif prep.spatial_dims == 2:
        raw = raw.permute(0, 3, 1, 2)
    a, b = _affine(prep, raw.ndim)
    return raw.float() * torch.from_numpy(a).to(device) + torch.from_numpy(b).to(device)
