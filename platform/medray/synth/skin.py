"""Synthetic dermoscopy in the HAM10000 layout: ``images/ISIC_00xxxxx.jpg`` + ``HAM10000_metadata.csv``.

Each of the 7 classes has its own lesion colour, size, border irregularity and texture
(e.g. mel: large, dark, multi-coloured, irregular; nv: uniform brown, round; vasc: red-purple
lobules), so a small CNN learns them in a few epochs while no single pixel gives the class away.
Class counts follow HAM10000's imbalance; some lesions are photographed several times (several
``image_id`` per ``lesion_id``), so splits must be grouped by lesion. The metadata CSV is sorted
by diagnosis, like the real one.
"""

from __future__ import annotations

import csv
import io

import numpy as np
from pydantic import Field
from tqdm import tqdm

from medray.config.base import MedrayModel
from medray.config.common import StorageOptions
from medray.errors import ConfigError

HAM_COUNTS = {"akiec": 327, "bcc": 514, "bkl": 1099, "df": 115, "mel": 1113, "nv": 6705, "vasc": 142}
CLASSES = list(HAM_COUNTS)
FIRST_IMAGE_NUMBER = 24306  # HAM10000's image ids run ISIC_0024306..ISIC_0034320
DX_TYPE = {"akiec": "histo", "bcc": "histo", "mel": "histo", "bkl": "consensus", "df": "consensus",
           "nv": "follow_up", "vasc": "consensus"}
LOCALIZATIONS = ["back", "lower extremity", "trunk", "upper extremity", "abdomen", "face", "chest",
                 "foot", "neck", "scalp", "hand"]

# Per class: lesion RGB, secondary RGB, radius (fraction of side), border irregularity,
# texture kind. Colours are means; every lesion varies around them.
STYLES: dict[str, dict] = {
    "akiec": {"rgb": (200, 110, 100), "rgb2": (235, 215, 200), "radius": 0.26, "irregular": 0.18, "texture": "scaly"},
    "bcc": {"rgb": (225, 170, 170), "rgb2": (190, 30, 45), "radius": 0.24, "irregular": 0.08, "texture": "vessels"},
    "bkl": {"rgb": (160, 115, 70), "rgb2": (115, 80, 45), "radius": 0.3, "irregular": 0.1, "texture": "cobble"},
    "df": {"rgb": (165, 110, 80), "rgb2": (240, 230, 220), "radius": 0.18, "irregular": 0.04, "texture": "ring"},
    "mel": {"rgb": (60, 35, 30), "rgb2": (70, 85, 125), "radius": 0.36, "irregular": 0.3, "texture": "multi"},
    "nv": {"rgb": (125, 80, 50), "rgb2": (125, 80, 50), "radius": 0.22, "irregular": 0.03, "texture": "smooth"},
    "vasc": {"rgb": (150, 25, 60), "rgb2": (90, 20, 80), "radius": 0.2, "irregular": 0.06, "texture": "lobules"},
}


class Config(MedrayModel):
    """What ``medray synth skin`` writes."""

    output: str = Field("medray-data/skin", description="Output folder or s3:// prefix")
    total_images: int = Field(700, ge=7, description="Images in all; split over classes like HAM10000")
    min_per_class: int = Field(5, ge=1, description="Fewest images any class gets")
    repeat_fraction: float = Field(0.25, ge=0, le=1, description="Share of lesions photographed 2-3 times")
    image_size: int = Field(64, ge=32, description="Side of each JPEG in pixels")
    jpeg_quality: int = Field(92, ge=50, le=100, description="JPEG quality")
    seed: int = Field(7, description="Random seed; the same seed writes the same bytes")
    storage: StorageOptions = Field(default_factory=StorageOptions, description="Object storage access")


def class_counts(total: int, min_per_class: int = 5) -> dict[str, int]:
    """Images per class proportional to HAM10000 (largest remainder), each at least ``min_per_class``."""
    if total < min_per_class * len(CLASSES):
        raise ConfigError(f"total_images={total} is too small for {len(CLASSES)} classes with "
                         f"min_per_class={min_per_class}; use at least {min_per_class * len(CLASSES)}")
    ham_total = sum(HAM_COUNTS.values())
    exact = {c: total * n / ham_total for c, n in HAM_COUNTS.items()}
    counts = {c: int(v) for c, v in exact.items()}
    for c in sorted(exact, key=lambda c: exact[c] - counts[c], reverse=True)[: total - sum(counts.values())]:
        counts[c] += 1
    for c in CLASSES:  # raise small classes to the floor, taking from the largest
        while counts[c] < min_per_class:
            counts[c] += 1
            counts[max(counts, key=counts.get)] -= 1
    return counts


# --------------------------------------------------------------------------- pure rendering

def lesion_params(label: str, rng: np.random.Generator) -> dict:
    """The fixed look of one lesion (shared by all its photographs)."""
    style = STYLES[label]
    jitter = lambda rgb, s: np.clip(np.array(rgb, float) + rng.normal(0, s, 3), 0, 255)  # noqa: E731
    harmonics = rng.normal(0, 1, (6, 2)) / np.arange(2, 8)[:, None]
    return {
        "label": label,
        "rgb": jitter(style["rgb"], 10), "rgb2": jitter(style["rgb2"], 10),
        "radius": style["radius"] * rng.uniform(0.85, 1.15),
        "aspect": rng.uniform(0.8, 1.0),
        "irregular": style["irregular"], "harmonics": harmonics,
        "texture": style["texture"], "texture_seed": int(rng.integers(2**31)),
        "skin": np.array([rng.uniform(200, 240), rng.uniform(150, 185), rng.uniform(125, 160)]),
    }


def _smooth_noise(size: int, cells: int, rng: np.random.Generator) -> np.ndarray:
    """Value noise in [0, 1]: a cells×cells random grid bilinearly upsampled."""
    from scipy.ndimage import zoom

    grid = rng.random((cells + 1, cells + 1))
    out = zoom(grid, size / (cells + 1), order=1, mode="nearest", grid_mode=True)
    return out[:size, :size]


def render_lesion(params: dict, size: int, rng: np.random.Generator) -> np.ndarray:
    """One photograph (uint8 size×size×3) of a lesion, at a random rotation, offset and light."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = (size - 1) / 2 + rng.normal(0, size * 0.04, 2)
    dy, dx = (ys - cy) / size, (xs - cx) / size
    rot = rng.uniform(0, 2 * np.pi)
    theta = np.arctan2(dy, dx) + rot
    r = np.hypot(dy, dx * params["aspect"])
    harmonics = params["harmonics"]
    k = np.arange(2, 2 + len(harmonics))[:, None, None]
    wobble = (harmonics[:, 0, None, None] * np.cos(k * theta) + harmonics[:, 1, None, None] * np.sin(k * theta)).sum(0)
    edge = params["radius"] * rng.uniform(0.93, 1.07) * (1 + params["irregular"] * wobble)
    soft = 0.012 + 0.03 * params["irregular"]
    mask = 1 / (1 + np.exp((r - edge) / soft))
    tex_rng = np.random.default_rng(params["texture_seed"])
    rel = np.clip(r / np.maximum(edge, 1e-3), 0, 2)
    colour = _texture(params, rel, theta, size, tex_rng, rng)
    light = 1 + 0.08 * (dx * np.cos(rot) + dy * np.sin(rot)) * rng.uniform(0.5, 1.5)
    skin = params["skin"] * rng.uniform(0.95, 1.05) * (0.96 + 0.08 * _smooth_noise(size, 6, rng))[..., None]
    image = (skin * (1 - mask[..., None]) + colour * mask[..., None]) * light[..., None]
    image += rng.normal(0, 4, image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _texture(params: dict, rel: np.ndarray, theta: np.ndarray, size: int,
             tex_rng: np.random.Generator, rng: np.random.Generator) -> np.ndarray:
    """Per-class lesion colour field (size×size×3 float)."""
    c1, c2 = params["rgb"], params["rgb2"]
    kind = params["texture"]
    blend = np.zeros_like(rel)
    if kind == "scaly":        # rough, flaky: high-frequency noise towards a pale scale colour
        blend = 0.6 * (_smooth_noise(size, size // 3, rng) > 0.55)
    elif kind == "vessels":    # pearly pink with thin red arborising lines
        lines = np.abs(np.sin(theta * 3 + 8 * rel + tex_rng.uniform(0, 6))) < 0.12
        blend = 0.9 * lines * (rel < 0.85)
    elif kind == "cobble":     # waxy mottled brown
        blend = _smooth_noise(size, max(4, size // 8), tex_rng)
    elif kind == "ring":       # brown rim, white scar-like centre
        blend = np.clip(1.4 - rel * 2.4, 0, 1)
    elif kind == "multi":      # dark with blue-grey veil patches and uneven pigment
        blend = 0.9 * (_smooth_noise(size, 5, tex_rng) > 0.5) * (rel > 0.2)
    elif kind == "lobules":    # red-purple lobules separated by darker septa
        blend = (_smooth_noise(size, max(4, size // 6), tex_rng) > 0.5).astype(float)
    shade = 1 - 0.15 * rel if kind in ("smooth", "multi") else 1.0
    out = c1 * (1 - blend[..., None]) + c2 * blend[..., None]
    return out * (shade[..., None] if isinstance(shade, np.ndarray) else shade)


# --------------------------------------------------------------------------- writing

def _plan(config: Config, rng: np.random.Generator) -> list[tuple[str, int, int]]:
    """(dx, lesion number, photographs) for every lesion, covering each class's image count."""
    plan, lesion = [], 0
    for label, count in class_counts(config.total_images, config.min_per_class).items():
        left = count
        while left > 0:
            shots = 1
            if rng.random() < config.repeat_fraction:
                shots = int(rng.integers(2, 4))
            shots = min(shots, left)
            plan.append((label, lesion, shots))
            lesion += 1
            left -= shots
    return plan


def generate(config: Config) -> dict:
    """Write the JPEGs and ``HAM10000_metadata.csv``; returns a summary naming every file."""
    from medray.datasets.codec import encode_image
    from medray.storage import atomic_write_text, atomic_write_bytes, join_uri

    rng = np.random.default_rng([config.seed, 11])
    plan = _plan(config, rng)
    n_images = sum(shots for _, _, shots in plan)
    lesion_ids = rng.permutation(len(plan)) + 1
    image_numbers = FIRST_IMAGE_NUMBER + rng.permutation(n_images)
    rows, files, next_image = [], [], 0
    for label, lesion, shots in tqdm(plan, desc="synth skin", unit="lesion"):
        lrng = np.random.default_rng([config.seed, 12, lesion])
        params = lesion_params(label, lrng)
        age, sex = int(lrng.integers(1, 18)) * 5, str(lrng.choice(["male", "female"]))
        place = str(lrng.choice(LOCALIZATIONS))
        for _ in range(shots):
            image_id = f"ISIC_{image_numbers[next_image]:07d}"
            next_image += 1
            jpeg = encode_image(render_lesion(params, config.image_size, lrng), "jpeg", config.jpeg_quality)
            uri = join_uri(config.output, "images", f"{image_id}.jpg")
            atomic_write_bytes(uri, jpeg, config.storage)
            files.append(uri)
            rows.append({"lesion_id": f"HAM_{lesion_ids[lesion]:07d}", "image_id": image_id, "dx": label,
                         "dx_type": DX_TYPE[label], "age": age, "sex": sex, "localization": place})
    rows.sort(key=lambda r: (r["dx"], r["lesion_id"], r["image_id"]))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    metadata = join_uri(config.output, "HAM10000_metadata.csv")
    atomic_write_text(metadata, buf.getvalue(), config.storage)
    counts = {c: sum(r["dx"] == c for r in rows) for c in CLASSES}
    return {"output": config.output, "metadata": metadata, "images_dir": join_uri(config.output, "images"),
            "num_images": len(rows), "num_lesions": len(plan), "class_counts": counts, "files": files}
