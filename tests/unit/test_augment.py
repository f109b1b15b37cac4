"""Augmentation keeps shape/dtype, changes pixels, is deterministic per seed; HED jitter keeps white."""

from __future__ import annotations

import numpy as np

from medray.train.augment import (AugmentConfig, augment_batch, build_augment_2d, build_augment_3d,
                                  hed_jitter_image)

ALL_ON = AugmentConfig(hflip=0.5, vflip=0.5, rot90=0.5, affine=0.5, brightness_contrast=0.5,
                       hed_jitter=0.5, blur=0.3, noise=0.3)


def _image(seed=0, shape=(32, 32, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_2d_changes_pixels_keeps_shape_and_is_seeded():
    img = _image()
    a, b, c = (build_augment_2d(ALL_ON, seed=s) for s in (7, 7, 8))
    outs_a = [a(img) for _ in range(6)]
    outs_b = [b(img) for _ in range(6)]
    outs_c = [c(img) for _ in range(6)]
    assert all(o.shape == img.shape and o.dtype == np.uint8 for o in outs_a)
    assert all(np.array_equal(x, y) for x, y in zip(outs_a, outs_b))
    assert not all(np.array_equal(x, y) for x, y in zip(outs_a, outs_c))
    assert sum(not np.array_equal(o, img) for o in outs_a) >= 5


def test_2d_grey_and_disabled():
    grey = _image(1, (16, 16, 1))
    out = build_augment_2d(ALL_ON, seed=0)(grey)
    assert out.shape == grey.shape and out.dtype == np.uint8
    off = build_augment_2d(ALL_ON.model_copy(update={"enabled": False}), seed=0)
    assert off(grey) is grey


def test_flip_only_is_exact():
    cfg = AugmentConfig(hflip=1.0, vflip=0, rot90=0, brightness_contrast=0, hed_jitter=0)
    img = _image(2)
    assert np.array_equal(build_augment_2d(cfg, seed=0)(img), img[:, ::-1])


def test_hed_jitter_keeps_white_near_white_and_changes_tissue():
    cfg = AugmentConfig(hflip=0, vflip=0, rot90=0, brightness_contrast=0, hed_jitter=1.0, hed_sigma=0.2)
    fn = build_augment_2d(cfg, seed=0)
    img = np.full((8, 8, 3), 255, np.uint8)
    img[4:] = (150, 60, 160)  # an eosin/hematoxylin-ish purple
    changed = 0
    for _ in range(5):
        out = fn(img)
        assert out[:4].min() >= 240  # white background stays (nearly) white: only the bias moves it
        changed += int(np.abs(out[4:].astype(int) - img[4:]).max() > 2)
    assert changed >= 4
    # no jitter (alpha 1, beta 0) is the identity up to rounding
    same = hed_jitter_image(img, np.ones(3), np.zeros(3))
    assert np.abs(same.astype(int) - img).max() <= 1


def test_3d_keeps_shape_and_is_seeded():
    vol = np.random.default_rng(3).normal(size=(1, 8, 16, 16)).astype(np.float32)
    a, b = build_augment_3d(ALL_ON, seed=5), build_augment_3d(ALL_ON, seed=5)
    outs = [a(vol) for _ in range(4)]
    assert all(o.shape == vol.shape and o.dtype == np.float32 for o in outs)
    assert all(np.array_equal(x, b(vol)) for x in outs)
    assert any(not np.allclose(o, vol) for o in outs)
    flat = np.zeros((2, 4, 6, 8), np.float32)  # a non-square plane is never rotated
    assert build_augment_3d(ALL_ON, seed=1)(flat).shape == flat.shape


def test_augment_batch_reproducible_with_rng():
    batch = np.stack([_image(i) for i in range(4)])
    fn = build_augment_2d(ALL_ON)
    one = augment_batch(batch, fn, np.random.default_rng(11))
    two = augment_batch(batch, fn, np.random.default_rng(11))
    assert one.shape == batch.shape and one.dtype == np.uint8 and np.array_equal(one, two)


def test_training_decode_builds_the_augmentation_once_per_process_and_stays_reproducible():
    from medray.datasets.codec import encode_image
    from medray.train import data as D

    rng = np.random.default_rng(5)
    images = [encode_image(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "png") for _ in range(4)]
    batch = {"image": np.array(images, dtype=object), "encoding": np.array(["png"] * 4, dtype=object),
             "label_name": np.array(["a", "b", "a", "b"], dtype=object)}
    cfg = AugmentConfig()
    first = D._decode_fn(batch, ["a", "b"], 32, 3, cfg, 7)
    assert D._augment_for(cfg, 7, 2) is D._augment_for(AugmentConfig(), 7, 2)  # equal config: the same object
    assert D._augment_for(cfg, 8, 2) is not D._augment_for(cfg, 7, 2)
    again = D._decode_fn(batch, ["a", "b"], 32, 3, cfg, 7)
    assert np.array_equal(first["image"], again["image"])  # reseeded per batch: reuse changes nothing
    plain = D._decode_fn(batch, ["a", "b"], 32, 3, None, 7)
    assert not np.array_equal(first["image"], plain["image"]) and first["label"].tolist() == [0, 1, 0, 1]
