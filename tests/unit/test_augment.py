"""Augmentation keeps shape/dtype, changes pixels, is deterministic per seed; HED jitter keeps white."""

from __future__ import annotations

import numpy as np

from medray.train.augment import AugmentConfig, build_augment_2d, build_augment_3d, hed_jitter_image

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


def test_training_augmentation_draws_anew_each_epoch_and_is_reproducible():
    """Worker-side augmentation: the same batch in the same epoch gives the same images (a rerun
    reproduces), another epoch gives other draws (a decode task re-running identically each epoch
    used to repeat them), and each collate thread gets its own pipeline."""
    import threading

    from medray.train import data as D

    rng = np.random.default_rng(5)
    batch = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    cfg = AugmentConfig()
    one, two = D.EpochAugment(cfg, 7, 2), D.EpochAugment(cfg, 7, 2)
    first = one(batch)
    assert first.shape == batch.shape and first.dtype == np.uint8 and not np.array_equal(first, batch)
    assert np.array_equal(first, two(batch)) and np.array_equal(first, one(batch))  # reseeded per batch
    one.epoch = 1
    second = one(batch)
    assert not np.array_equal(second, first)
    two.epoch = 1
    assert np.array_equal(second, two(batch))

    pipelines = []
    thread = threading.Thread(target=lambda: pipelines.append(one._pipeline()))
    thread.start()
    thread.join()
    assert pipelines[0] is not one._pipeline() and one._pipeline() is one._pipeline()

    volumes = rng.integers(0, 256, (2, 1, 8, 16, 16), dtype=np.uint8)
    out = D.EpochAugment(cfg, 7, 3)(volumes)
    assert out.shape == volumes.shape and out.dtype == np.uint8


def test_decoded_stream_is_not_augmented_and_augmentation_follows_the_config():
    from medray.datasets.codec import encode_image
    from medray.train import data as D
    from medray.train.config import TrainConfig

    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(4)]
    batch = {"image": np.array([encode_image(i, "png") for i in images], dtype=object),
             "encoding": np.array(["png"] * 4, dtype=object), "label_name": np.array(["a", "b", "a", "b"], dtype=object)}
    out = D.decode_batch(batch, ["a", "b"], 32, 3)
    assert np.array_equal(out["image"], np.stack(images)) and out["label"].tolist() == [0, 1, 0, 1]
    cfg = TrainConfig(dataset="x", preprocessing={"size": 32})
    assert isinstance(D.augmentation(cfg), D.EpochAugment)
    assert D.augmentation(cfg.model_copy(update={"augment": AugmentConfig(enabled=False)})) is None
    assert D.example_bytes(cfg) == 32 * 32 * 3

    from medray.train.loop import collate_threads

    assert collate_threads(cfg, None) == 1  # no augmentation: Ray's default prefetch
    assert collate_threads(cfg, D.augmentation(cfg)) == 2  # default 0.5 CPU per worker: still 2 threads
    many = cfg.model_copy(update={"scaling": cfg.scaling.model_copy(update={"cpus_per_worker": 8})})
    assert collate_threads(many, D.augmentation(many)) == 4  # Ray caps the format pool at 4
