"""Optional learned stage 1: a small MONAI UNet trained on disk masks around the known figures
(mitoses and mimics) of generated HPFs; its thresholded output feeds the same component → centroid
step as the stain threshold. Kept light: few channels, random crops, a few hundred steps on CPU."""

from __future__ import annotations

import numpy as np

CHANNELS = (8, 16, 32)


def disk_mask(shape: tuple[int, int], points, radius: float = 10.0) -> np.ndarray:
    """Float32 H×W mask: 1 inside a disk of ``radius`` around each (x, y) point."""
    h, w = shape
    mask = np.zeros((h, w), np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    for x, y in np.asarray(points, np.float64).reshape(-1, 2):
        mask[(xx - x) ** 2 + (yy - y) ** 2 <= radius**2] = 1.0
    return mask


def build_unet():
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=3, out_channels=1, channels=CHANNELS, strides=(2, 2), num_res_units=1)


def train_unet(images: list[np.ndarray], masks: list[np.ndarray], steps: int = 200, crop: int = 128,
               batch: int = 8, lr: float = 3e-3, seed: int = 0, output: str | None = None):
    """Train on random crops (Dice + BCE); returns the model (and saves its state dict to ``output``)."""
    import torch
    from monai.losses import DiceCELoss

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_unet()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = DiceCELoss(sigmoid=True)
    model.train()
    for _ in range(steps):
        xs, ys = [], []
        for _ in range(batch):
            i = int(rng.integers(len(images)))
            h, w = images[i].shape[:2]
            r, c = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
            xs.append(images[i][r:r + crop, c:c + crop])
            ys.append(masks[i][r:r + crop, c:c + crop])
        x = torch.from_numpy(np.stack(xs).transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
        y = torch.from_numpy(np.stack(ys)[:, None])
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
    model.eval()
    if output:
        from medray.storage import atomic_local_path

        with atomic_local_path(output, suffix=".pt") as local:
            torch.save(model.state_dict(), local)
    return model


class Segmenter:
    """Callable RGB uint8 H×W×3 → foreground probability H×W (image padded to a multiple of 4)."""

    def __init__(self, model) -> None:
        self.model = model.eval()

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        import torch

        h, w = rgb.shape[:2]
        ph, pw = (-h) % 4, (-w) % 4
        x = np.pad(rgb, ((0, ph), (0, pw), (0, 0)), mode="reflect").astype(np.float32) / 255.0
        with torch.inference_mode():
            out = torch.sigmoid(self.model(torch.from_numpy(x.transpose(2, 0, 1)[None].copy())))
        return out[0, 0, :h, :w].numpy()


def load_segmenter(uri: str, storage=None) -> Segmenter:
    import torch

    from medray.errors import ModelError
    from medray.storage import local_copy

    model = build_unet()
    try:
        model.load_state_dict(torch.load(local_copy(uri, storage), map_location="cpu", weights_only=True))
    except (OSError, RuntimeError) as err:
        raise ModelError(f"cannot load UNet proposals model {uri!r}: {err}; train one with "
                         "medray.mitosis.segmentation.train_unet") from None
    return Segmenter(model)
