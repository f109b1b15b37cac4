"""64×64 patches centred on candidates, labelled by distance to the nearest true mitosis, written
as a medray Parquet dataset (one shard per image, group = image id) for the shared trainer."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from medray.datasets import schema as S
from medray.mitosis.config import MitosisConfig, PatchConfig

CLASSES = ["normal", "mitosis"]
KINDS = ("candidate", "truth", "jitter", "mimic")
MITOSIS_SCHEMA = pa.schema(S.BASE_FIELDS + [
    pa.field("image_id", pa.string()),
    pa.field("x", pa.float64()),          # patch centre in the image (pixels)
    pa.field("y", pa.float64()),
    pa.field("kind", pa.string()),        # candidate | truth | jitter | mimic
    pa.field("distance", pa.float64()),   # to the nearest true mitosis (inf when none)
])


def extract_patches(rgb: np.ndarray, centres: np.ndarray, size: int = 64) -> np.ndarray:
    """(N, size, size, 3) uint8 patches centred on (x, y) points; the image is reflect-padded so
    patches near the border keep their size."""
    pts = np.asarray(centres, np.float64).reshape(-1, 2)
    if len(pts) == 0:
        return np.zeros((0, size, size, 3), np.uint8)
    half = size // 2
    padded = np.pad(rgb, ((half, half), (half, half), (0, 0)), mode="reflect")
    h, w = rgb.shape[:2]
    cols = np.clip(np.round(pts[:, 0]).astype(np.int64), 0, w - 1)
    rows = np.clip(np.round(pts[:, 1]).astype(np.int64), 0, h - 1)
    offs = np.arange(size)
    return padded[rows[:, None, None] + offs[None, :, None], cols[:, None, None] + offs[None, None, :]]


def nearest_distance(points: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Distance from each point to its nearest true mitosis (inf when there is none)."""
    from scipy.spatial import cKDTree

    pts = np.asarray(points, np.float64).reshape(-1, 2)
    gt = np.asarray(truth, np.float64).reshape(-1, 2)
    if len(gt) == 0 or len(pts) == 0:
        return np.full(len(pts), np.inf)
    return cKDTree(gt).query(pts)[0]


def label_points(candidates, truth, mimics, cfg: PatchConfig, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """(centres, labels 0/1, kinds, distances): candidates by distance (ambiguous band dropped),
    plus true mitoses (+ jittered copies) as positives and known mimics as negatives."""
    cand = np.asarray(candidates, np.float64).reshape(-1, 2)
    gt = np.asarray(truth, np.float64).reshape(-1, 2)
    d = nearest_distance(cand, gt)
    positive = d <= cfg.positive_radius
    keep = positive | (d > max(cfg.ignore_radius, cfg.positive_radius)) | (cfg.ignore_radius == 0)
    pts, labels, kinds = [cand[keep]], [positive[keep].astype(np.int64)], ["candidate"] * int(keep.sum())
    if cfg.include_truth and len(gt):
        pts.append(gt)
        labels.append(np.ones(len(gt), np.int64))
        kinds += ["truth"] * len(gt)
        for _ in range(cfg.truth_jitter_copies):
            shift = rng.uniform(-cfg.positive_radius / 2, cfg.positive_radius / 2, gt.shape)
            pts.append(gt + shift)
            labels.append(np.ones(len(gt), np.int64))
            kinds += ["jitter"] * len(gt)
    mim = np.asarray(mimics if mimics is not None else [], np.float64).reshape(-1, 2)
    if cfg.include_mimics and len(mim):
        md = nearest_distance(mim, gt)
        mim = mim[md > max(cfg.ignore_radius, cfg.positive_radius)]
        pts.append(mim)
        labels.append(np.zeros(len(mim), np.int64))
        kinds += ["mimic"] * len(mim)
    centres = np.concatenate(pts)
    return centres, np.concatenate(labels), kinds, nearest_distance(centres, gt)


def image_rows(image_id: str, source: str, rgb: np.ndarray, centres, labels, kinds, distances,
               cfg: PatchConfig) -> list[dict]:
    """Dataset rows (encoded patches) for one image."""
    from medray.datasets.codec import encode_image

    patches = extract_patches(rgb, centres, cfg.size)
    return [{S.IMAGE: encode_image(p, cfg.encoding), S.ENCODING: cfg.encoding, S.LABEL: int(lab),
             S.LABEL_NAME: CLASSES[int(lab)], S.GROUP: image_id, S.SOURCE: source, "image_id": image_id,
             "x": float(c[0]), "y": float(c[1]), "kind": kind, "distance": float(dist)}
            for p, c, lab, kind, dist in zip(patches, centres, labels, kinds, distances)]


def split_units(units: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """Split work units by image into (train, val); both non-empty when there are >= 2 images."""
    from medray.errors import DataError

    if len(units) < 2:
        raise DataError(f"need at least 2 images to split train/val, got {len(units)}")
    order = np.random.default_rng(seed).permutation(len(units))
    n_val = min(max(1, int(round(len(units) * val_fraction))), len(units) - 1)
    val = sorted((units[i] for i in order[:n_val]), key=lambda u: u.unit_id)
    train = sorted((units[i] for i in order[n_val:]), key=lambda u: u.unit_id)
    return train, val


def _mimics_by_image(hpf_dir: str | None, storage) -> dict[str, list]:
    """Known mimic positions from ``truth.json`` of a synthetic HPF folder (empty otherwise)."""
    from medray.storage import exists, join_uri, read_text

    if not hpf_dir or not exists(join_uri(hpf_dir, "truth.json"), storage):
        return {}
    data = json.loads(read_text(join_uri(hpf_dir, "truth.json"), storage))
    return {entry["image_id"]: entry.get("mimics", []) for entry in data.get("images", [])}


def write_patch_dataset(units: list, output_uri: str, cfg: MitosisConfig, mimics: dict | None = None,
                        desc: str = "patches") -> dict:
    """Proposals + labelled patches for every unit → dataset at ``output_uri``; per-image failures
    are recorded in the summary (and ``dataset.json`` extra) and skipped; ``dataset.json`` last."""
    from tqdm import tqdm

    from medray.datasets.shards import finalize_dataset, rows_to_table, write_shard
    from medray.errors import MedrayError
    from medray.mitosis.inputs import load_unit
    from medray.mitosis.proposals import propose, proposal_recall

    rng = np.random.default_rng(cfg.patches.seed)
    shards, failures, recalls = [], [], {}
    found = total = 0
    for unit in tqdm(units, desc=desc, unit="image", leave=False):
        try:
            rgb, truth, _ = load_unit(unit, cfg.storage)
            if truth is None:
                raise MedrayError(f"{unit.unit_id}: no mitosis CSV (training needs truth; expected "
                                  f"mitoses/{unit.unit_id}.csv)")
            cand = propose(rgb, cfg.proposals, storage=cfg.storage)
        except MedrayError as err:
            failures.append({"unit_id": unit.unit_id, "error": str(err)})
            continue
        recalls[unit.unit_id] = proposal_recall(cand, truth, cfg.matching.radius)
        found += int(round(recalls[unit.unit_id] * len(truth)))
        total += len(truth)
        centres, labels, kinds, dist = label_points(cand, truth, (mimics or {}).get(unit.unit_id), cfg.patches, rng)
        rows = image_rows(unit.unit_id, unit.image or unit.slide, rgb, centres, labels, kinds, dist, cfg.patches)
        if rows:
            shards.append(write_shard(rows_to_table(rows, MITOSIS_SCHEMA), output_uri, unit.unit_id, cfg.storage))
    if not shards:
        raise MedrayError(f"no patches written to {output_uri!r}: every image failed: {failures}")
    extra = {"proposal_recall": found / total if total else 1.0, "recall_per_image": recalls,
             "failures": failures, "patch_size": cfg.patches.size}
    meta = finalize_dataset(output_uri, shards, CLASSES, "mitosis_patches", cfg.storage, extra)
    return {"uri": output_uri, "num_rows": meta["num_rows"], "class_counts": meta["class_counts"], **extra}
