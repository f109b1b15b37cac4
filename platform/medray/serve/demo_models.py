"""Tiny models trained in seconds on synthetic images, saved as bundles: for tests, the Serve
benchmark, and a local ``serve run`` before the real training jobs have produced models.
"""

from __future__ import annotations

import numpy as np

CT_CLASSES = ["CT-0", "CT-4"]


def ct_slice_uint8(severity: float, rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(HU slice, lung-windowed uint8 slice) of a synthetic chest CT at ``severity`` (0..4)."""
    from medray.datasets.loaders import window
    from medray.synth.ct import render_slice

    hu = render_slice(size, severity, rng)
    return hu, np.round(window(hu, "lung") * 255).astype(np.uint8)


def skin_image(label: str, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """One synthetic dermoscopy image (uint8 size×size×3) of class ``label``."""
    from medray.synth.skin import lesion_params, render_lesion

    return render_lesion(lesion_params(label, rng), size, rng)


def _fit(spec, images: np.ndarray, labels: np.ndarray, prep, epochs: int, seed: int):
    """A few epochs of Adam on in-memory uint8 images (NHW or NHWC)."""
    import torch

    from medray.models.preprocess import to_tensor
    from medray.models.registry import build_model

    torch.manual_seed(seed)
    model = build_model(spec)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x_all = to_tensor(images, prep)
    y_all = torch.as_tensor(labels)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x_all), generator=gen).split(16):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x_all[idx]), y_all[idx])
            loss.backward()
            opt.step()
    _recalibrate_batchnorm(model, x_all)
    return model.eval()


def _recalibrate_batchnorm(model, x_all) -> None:
    """Exact BatchNorm statistics over the whole (tiny) training set, so eval matches training."""
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for chunk in x_all.split(64):
            model(chunk)
    for m in norms:
        m.momentum = 0.1


def train_ct_model(directory: str, size: int = 64, per_class: int = 12, epochs: int = 8, seed: int = 0) -> str:
    """A 2D smallcnn telling CT-0 (clear lungs) from CT-4 (extensive opacities); returns the bundle dir."""
    from medray.models.bundle import save_bundle
    from medray.models.preprocess import Preprocessing
    from medray.models.registry import ModelSpec

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for index, severity in enumerate((0.0, 4.0)):
        for _ in range(per_class):
            images.append(ct_slice_uint8(severity, rng, size)[1])
            labels.append(index)
    spec = ModelSpec(name="smallcnn", spatial_dims=2, in_channels=1, num_classes=2)
    prep = Preprocessing(spatial_dims=2, channels=1, size=size, mean=[0.5], std=[0.5], info={"window": "lung"})
    model = _fit(spec, np.stack(images), np.array(labels), prep, epochs, seed)
    return save_bundle(directory, model, spec, CT_CLASSES, prep)


def train_skin_model(directory: str, size: int = 64, per_class: int = 8, epochs: int = 4, seed: int = 0) -> str:
    """A 2D RGB smallcnn over the 7 HAM10000 classes; returns the bundle dir."""
    from medray.models.bundle import save_bundle
    from medray.models.preprocess import Preprocessing
    from medray.models.registry import ModelSpec
    from medray.synth.skin import CLASSES

    rng = np.random.default_rng(seed)
    images = [skin_image(label, rng, size) for label in CLASSES for _ in range(per_class)]
    labels = [i for i in range(len(CLASSES)) for _ in range(per_class)]
    spec = ModelSpec(name="smallcnn", spatial_dims=2, in_channels=3, num_classes=len(CLASSES))
    prep = Preprocessing(spatial_dims=2, channels=3, size=size)
    model = _fit(spec, np.stack(images), np.array(labels), prep, epochs, seed)
    return save_bundle(directory, model, spec, list(CLASSES), prep)


def untrained_model(directory: str, spatial_dims: int = 2, channels: int = 3, size: int | tuple = 64,
                    classes: list[str] | None = None, seed: int = 0, name: str = "smallcnn") -> str:
    """A randomly initialised bundle of registry model ``name`` (shapes and speed only, no learned
    signal; nothing downloaded)."""
    import torch

    from medray.models.bundle import save_bundle
    from medray.models.preprocess import Preprocessing
    from medray.models.registry import ModelSpec, build_model

    classes = classes or ["a", "b"]
    torch.manual_seed(seed)
    spec = ModelSpec(name=name, spatial_dims=spatial_dims, in_channels=channels, num_classes=len(classes))
    prep = Preprocessing(spatial_dims=spatial_dims, channels=channels, size=size,
                         mean=[0.5] * channels, std=[0.5] * channels)
    return save_bundle(directory, build_model(spec).eval(), spec, classes, prep)
