"""Ray Data side of training: read + split a dataset, decode rows in ``map_batches``.

The stream handed to Ray Train holds ``image`` (uint8, N×H×W×C at the model's size) and ``label``
(model class index); normalisation to float happens on the worker in ``to_tensor``, so the stream
stays 4× smaller than float pixels. Augmentation also happens on the worker (``EpochAugment``),
because only the worker knows the epoch: a decode task re-runs identically every epoch, so
augmenting there gave every epoch the same draws. That also lets a small decoded training set
be held in the object store for the whole run (``cache_train_mb``).
"""

from __future__ import annotations

import dataclasses
import threading
import zlib
from typing import Any

import numpy as np

from medray.datasets.codec import decode_image
from medray.datasets.reader import DatasetInfo, read_dataset, read_info, split_groups
from medray.errors import ConfigError


@dataclasses.dataclass
class TrainData:
    """The encoded train/val streams plus what lineage needs (classes, groups, per-class counts)."""

    info: DatasetInfo
    classes: list[str]
    train: Any
    val: Any
    train_groups: list[str]
    val_groups: list[str]
    counts: dict[str, dict[str, int]]
    val_info: DatasetInfo | None = None


def resolve_classes(info: DatasetInfo, labels: list[str] | None) -> list[str]:
    """The model's classes in output order: ``labels`` (checked against the dataset) or all classes."""
    if labels is None:
        return list(info.classes)
    unknown = [c for c in labels if c not in info.classes]
    if unknown:
        raise ConfigError(f"labels {unknown} are not classes of dataset {info.uri!r}; its classes: {info.classes}")
    if len(labels) < 2:
        raise ConfigError(f"labels must name at least 2 classes, got {labels}")
    return list(labels)


def _counts(info: DatasetInfo, groups: list[str] | None, classes: list[str]) -> dict[str, int]:
    """Rows per class in the shards of ``groups`` (shard records hold per-class counts)."""
    total = dict.fromkeys(classes, 0)
    for shard in info.shards_for(groups):
        for name, n in shard.get("class_counts", {}).items():
            if name in total:
                total[name] += int(n)
    return total


def load_train_data(cfg) -> TrainData:
    """Read the dataset(s) and split by group; nothing is decoded or materialised here."""
    info = read_info(cfg.dataset, cfg.storage)
    classes = resolve_classes(info, cfg.labels)
    if cfg.val_dataset:
        val_info = read_info(cfg.val_dataset, cfg.storage)
        resolve_classes(val_info, classes)
        train_groups, val_groups = list(info.groups), list(val_info.groups)
        train = read_dataset(cfg.dataset, cfg.storage, labels=classes, info=info)
        val = read_dataset(cfg.val_dataset, cfg.storage, labels=classes, info=val_info)
        counts = {"train": _counts(info, None, classes), "val": _counts(val_info, None, classes)}
        return TrainData(info, classes, train, val, train_groups, val_groups, counts, val_info)
    train_groups, val_groups = split_groups(info, cfg.split.val_fraction, cfg.split.seed)
    # shard class counts are per shard: exact when a shard holds one group (how writers shard)
    train = read_dataset(cfg.dataset, cfg.storage, labels=classes, groups=train_groups, info=info)
    val = read_dataset(cfg.dataset, cfg.storage, labels=classes, groups=val_groups, info=info)
    counts = {"train": _counts(info, train_groups, classes), "val": _counts(info, val_groups, classes)}
    return TrainData(info, classes, train, val, train_groups, val_groups, counts)


def _to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == channels:
        return image
    if image.shape[-1] == 1:
        return np.repeat(image, channels, axis=-1)
    if channels == 1 and image.shape[-1] >= 3:
        return np.round(image[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))[
            ..., None].astype(image.dtype)
    raise ConfigError(f"image has {image.shape[-1]} channels; the model expects {channels} (model.in_channels)")


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == size and image.shape[1] == size:
        return image
    from PIL import Image

    if image.shape[-1] == 1:
        return np.asarray(Image.fromarray(image[..., 0]).resize((size, size), Image.BILINEAR))[..., None]
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def to_stream_layout(array: np.ndarray, encoding: str, spatial_dims: int) -> np.ndarray:
    """A decoded example → the stream's layout: uint8 HxW[xC] (2D) or uint8 CxDxHxW (3D).

    JPEG/PNG decode to uint8 HxW[xC] already; NPY examples (manifest ingest of DICOM/NIfTI) are
    float32 channel-first in [0, 1]: scaled to 8 bit and, for 2D, moved to channels-last.
    """
    if encoding != "npy":
        return array
    arr = np.asarray(array)
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    if spatial_dims == 2:
        return arr.transpose(1, 2, 0) if arr.ndim == 3 else arr
    return arr if arr.ndim == 4 else arr[None]


def decode_batch(batch: dict[str, np.ndarray], classes: list[str], size: int, channels: int,
                 spatial_dims: int = 2) -> dict[str, np.ndarray]:
    """Encoded rows → uint8 N×size×size×C images (N×C×D×H×W volumes) and class indices (pure;
    used in ``map_batches``; augmentation is the worker's, ``EpochAugment``)."""
    index = {name: i for i, name in enumerate(classes)}
    images = []
    for data, encoding in zip(batch["image"], batch["encoding"]):
        image = to_stream_layout(decode_image(bytes(data), str(encoding)), str(encoding), spatial_dims)
        if spatial_dims == 3:  # volumes were resampled to one shape at ingest (loader.target_shape)
            if image.shape[0] != channels:
                raise ConfigError(f"volume has {image.shape[0]} channels; the model expects {channels}")
        else:
            image = _to_channels(image, channels)
            if image.dtype != np.uint8:
                image = np.clip(image, 0, 255).astype(np.uint8)
            image = _resize(image, size)
        images.append(image)
    labels = np.array([index[str(name)] for name in batch["label_name"]], dtype=np.int64)
    empty = (0, channels, size, size, size) if spatial_dims == 3 else (0, size, size, channels)
    out = np.stack(images) if images else np.zeros(empty, np.uint8)
    return {"image": out, "label": labels}


def apply_augment(augment: Any, image: np.ndarray) -> np.ndarray:
    """Run a 2D augmentation (HWC uint8 → HWC uint8)."""
    out = np.asarray(augment(image))
    return out if out.dtype == np.uint8 else np.clip(out, 0, 255).astype(np.uint8)


def augment_image(augment: Any, image: np.ndarray, spatial_dims: int) -> np.ndarray:
    """One stream example through an augmentation: 2D HWC uint8, or a 3D CDHW uint8 volume
    (augmented as floats in [0, 1])."""
    if spatial_dims == 3:
        return np.clip(np.rint(augment(image.astype(np.float32) / 255.0) * 255.0), 0, 255).astype(np.uint8)
    return apply_augment(augment, image)


class EpochAugment:
    """Augments decoded training batches on the Ray Train worker, seeded by (seed, epoch, batch
    content): new draws every epoch, the same draws for the same run. Safe to call from the
    iterator's collate threads (one pipeline per thread, reseeded per batch)."""

    def __init__(self, augment_cfg: Any, seed: int, spatial_dims: int) -> None:
        self.cfg, self.seed, self.spatial_dims = augment_cfg, int(seed), int(spatial_dims)
        self.epoch = 0
        self._local = threading.local()

    def _pipeline(self) -> Any:
        fn = getattr(self._local, "fn", None)
        if fn is None:
            from medray.train.augment import build_augment_2d, build_augment_3d

            build = build_augment_3d if self.spatial_dims == 3 else build_augment_2d
            fn = self._local.fn = build(self.cfg, self.seed)
        return fn

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if len(images) == 0:
            return images
        fn = self._pipeline()
        first = zlib.crc32(np.ascontiguousarray(images[0]).tobytes())
        fn.reseed(int(np.random.default_rng([self.seed, self.epoch, first]).integers(0, 2**31 - 1)))
        return np.stack([augment_image(fn, image, self.spatial_dims) for image in images])


def augmentation(cfg) -> EpochAugment | None:
    """The worker-side augmentation of a training config, or None when it is off."""
    if not getattr(cfg.augment, "enabled", True):
        return None
    return EpochAugment(cfg.augment, cfg.seed, cfg.model.spatial_dims)


def decoded(ds, cfg, classes: list[str], batch_size: int = 64):
    """``ds`` of encoded rows → stream of decoded examples at the model's size (not augmented)."""
    return ds.map_batches(
        decode_batch, batch_format="numpy", batch_size=batch_size,
        fn_kwargs={"classes": classes, "size": cfg.preprocessing.size, "channels": cfg.model.in_channels,
                   "spatial_dims": cfg.model.spatial_dims})


def materialize_in_order(ds):
    """``ds.materialize()`` with its blocks in input order (Ray's default keeps them in finishing
    order, which would make a run's batches, and so its results, differ between runs)."""
    options = ds.context.execution_options
    saved = options.preserve_order
    options.preserve_order = True
    try:
        return ds.materialize()  # copies the context as it is now
    finally:
        options.preserve_order = saved


def example_bytes(cfg) -> int:
    """About the bytes of one decoded stream example: uint8 pixels at the model's input size.
    Volumes keep their ingest shape (``loader.target_shape``), which this config does not know:
    size³ stands in for it (the shipped configs ingest 32×64×64 for size 64, so it errs large,
    but a larger ingest shape would be underestimated)."""
    size, channels = cfg.preprocessing.size, cfg.model.in_channels
    return channels * size ** (3 if cfg.model.spatial_dims == 3 else 2)
