"""Pure geometry of a synthetic slide: tissue blobs, tumor polygons with holes, mitoses, mimics.

Everything is in level-0 pixel coordinates and follows from ``(width, height, seed, ...)`` alone,
so the ground truth can be re-derived exactly and rasterized at any downsample for scoring.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

Polygon = list[list[float]]  # [[x, y], ...], open ring (first vertex not repeated)

LABEL_BACKGROUND, LABEL_TISSUE, LABEL_TUMOR = 0, 1, 2


@dataclass
class TumorRegion:
    """One tumor polygon and the exclusion holes inside it (rendered as normal tissue)."""

    polygon: Polygon
    holes: list[Polygon] = field(default_factory=list)


@dataclass
class SlideLayout:
    """The exact truth of one slide; ``mitosis_kinds``/``mimic_kinds`` pick the stamp shapes."""

    width: int
    height: int
    seed: int
    tissue: list[Polygon]
    tumors: list[TumorRegion]
    mitoses: list[list[int]]  # [[x, y], ...]
    mimics: list[list[int]]
    mitosis_kinds: list[int] = field(default_factory=list)
    mimic_kinds: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SlideLayout":
        """Rebuild from ``to_dict()`` output or a slide's ``*_truth.json`` (extra keys ignored)."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["tumors"] = [TumorRegion(**t) for t in known["tumors"]]
        return cls(**known)

    def label_at(self, xs, ys) -> np.ndarray:
        """0 background, 1 normal tissue (holes included), 2 tumor, at level-0 points."""
        xs, ys = np.asarray(xs, float), np.asarray(ys, float)
        tissue = np.zeros(xs.shape, bool)
        for poly in self.tissue:
            tissue |= points_in_polygon(xs, ys, poly)
        tumor = np.zeros(xs.shape, bool)
        for region in self.tumors:
            inside = points_in_polygon(xs, ys, region.polygon)
            for hole in region.holes:
                inside &= ~points_in_polygon(xs, ys, hole)
            tumor |= inside
        labels = np.where(tissue, LABEL_TISSUE, LABEL_BACKGROUND)
        return np.where(tumor & tissue, LABEL_TUMOR, labels).astype(np.uint8)


def points_in_polygon(xs: np.ndarray, ys: np.ndarray, poly: Polygon) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorized over points."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    v = np.asarray(poly, float)
    inside = np.zeros(xs.size, bool)
    fx, fy = xs.ravel(), ys.ravel()
    near = np.nonzero((fx >= v[:, 0].min()) & (fx <= v[:, 0].max())
                      & (fy >= v[:, 1].min()) & (fy <= v[:, 1].max()))[0]
    if near.size == 0:
        return inside.reshape(xs.shape)
    x1, y1 = v[:, 0], v[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    px, py = fx[near, None], fy[near, None]
    crosses = (y1 <= py) != (y2 <= py)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at = x1 + (py - y1) * (x2 - x1) / (y2 - y1)
    inside[near] = (np.count_nonzero(crosses & (px < x_at), axis=1) % 2) == 1
    return inside.reshape(xs.shape)


def rasterize_polygon(poly, shape: tuple[int, int], offset=(0.0, 0.0), scale: float = 1.0) -> np.ndarray:
    """Boolean mask of pixels whose centres lie inside ``poly`` (scanline, even-odd).

    Pixel (r, c) has its centre at level-0 point ``offset + (c + 0.5, r + 0.5) * scale``.
    """
    h, w = shape
    v = np.asarray(poly, float)
    # polygon in pixel-index units, where pixel centres sit on integers
    x = (v[:, 0] - offset[0]) / scale - 0.5
    y = (v[:, 1] - offset[1]) / scale - 0.5
    mask = np.zeros((h, w), bool)
    if h == 0 or w == 0 or y.max() < 0 or y.min() > h - 1 or x.max() < 0 or x.min() > w - 1:
        return mask
    x1, y1, x2, y2 = x, y, np.roll(x, -1), np.roll(y, -1)
    touches = ((np.maximum(x1, x2) >= -1) & (np.minimum(x1, x2) <= w) &
               (np.maximum(y1, y2) >= -1) & (np.minimum(y1, y2) <= h))
    if not touches.any():  # no edge near the region: it is wholly inside or wholly outside
        mask[:] = points_in_polygon(np.array([0.0]), np.array([0.0]), np.stack([x, y], 1))[0]
        return mask
    r_lo = max(0, int(np.ceil(y.min())))
    r_hi = min(h - 1, int(np.floor(y.max())))
    rows = np.arange(r_lo, r_hi + 1, dtype=float)[:, None]
    crosses = (y1 <= rows) != (y2 <= rows)
    ri, ei = np.nonzero(crosses)
    if ri.size == 0:
        return mask
    yr = rows[ri, 0]
    x_at = x1[ei] + (yr - y1[ei]) * (x2[ei] - x1[ei]) / (y2[ei] - y1[ei])
    cols = np.clip(np.floor(x_at).astype(np.int64) + 1, 0, w)
    toggles = np.zeros((r_hi - r_lo + 1) * (w + 1), np.int32)
    np.add.at(toggles, ri * (w + 1) + cols, 1)
    inside = (np.cumsum(toggles.reshape(-1, w + 1), axis=1)[:, :w] % 2).astype(bool)
    mask[r_lo:r_hi + 1] = inside
    return mask


def _bbox(poly) -> tuple[float, float, float, float]:
    v = np.asarray(poly, float)
    return v[:, 0].min(), v[:, 1].min(), v[:, 0].max(), v[:, 1].max()


def label_region(layout: SlideLayout, x0: float, y0: float, shape: tuple[int, int],
                 scale: float = 1.0) -> np.ndarray:
    """Label map (0/1/2) of a region whose pixel (r, c) centre is ``(x0, y0) + (c+.5, r+.5)*scale``."""
    h, w = shape
    x1, y1 = x0 + w * scale, y0 + h * scale

    def touching(poly) -> bool:
        bx0, by0, bx1, by1 = _bbox(poly)
        return bx1 >= x0 and bx0 <= x1 and by1 >= y0 and by0 <= y1

    tissue = np.zeros(shape, bool)
    for poly in layout.tissue:
        if touching(poly):
            tissue |= rasterize_polygon(poly, shape, (x0, y0), scale)
    labels = tissue.astype(np.uint8)
    for region in layout.tumors:
        if not touching(region.polygon):
            continue
        inside = rasterize_polygon(region.polygon, shape, (x0, y0), scale)
        for hole in region.holes:
            if touching(hole):
                inside &= ~rasterize_polygon(hole, shape, (x0, y0), scale)
        labels[inside & tissue] = LABEL_TUMOR
    return labels


def truth_mask(layout: SlideLayout, downsample: float, kind: str = "tumor") -> np.ndarray:
    """Boolean tumor or tissue mask of the whole slide at ``downsample`` (for scoring)."""
    if kind not in ("tumor", "tissue"):
        raise ValueError(f"kind must be 'tumor' or 'tissue', got {kind!r}")
    shape = (int(np.ceil(layout.height / downsample)), int(np.ceil(layout.width / downsample)))
    labels = label_region(layout, 0.0, 0.0, shape, downsample)
    return labels == LABEL_TUMOR if kind == "tumor" else labels >= LABEL_TISSUE


def star_polygon(rng: np.random.Generator, cx: float, cy: float, radius: float,
                 vertices: int = 96, roughness: float = 0.18) -> tuple[Polygon, float, float]:
    """An irregular blob star-shaped about (cx, cy); returns (polygon, min radius, max radius)."""
    theta = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    r = np.ones_like(theta)
    for k in range(2, 8):
        r += rng.uniform(0, roughness / k * 2) * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
    r += rng.normal(0, roughness / 12, vertices)
    r = np.clip(r, 0.55, None) * radius
    poly = [[round(float(cx + ri * np.cos(t)), 2), round(float(cy + ri * np.sin(t)), 2)]
            for ri, t in zip(r, theta)]
    return poly, float(r.min()), float(r.max())


def _candidates(rng, layout: SlideLayout, want_label: int, n: int) -> np.ndarray:
    """``n`` random integer points inside the bounding box of one region of the wanted label."""
    polys = [r.polygon for r in layout.tumors] if want_label == LABEL_TUMOR else layout.tissue
    if not polys:
        return np.zeros((0, 2), int)
    bx0, by0, bx1, by1 = _bbox(polys[int(rng.integers(len(polys)))])
    cand = np.stack([rng.uniform(bx0, bx1, n), rng.uniform(by0, by1, n)], 1)
    return np.round(cand).astype(int)


def _place_points(rng, layout: SlideLayout, count: int, want_label: int, taken: list,
                  min_dist: float, edge: float) -> list[list[int]]:
    """Up to ``count`` integer points of one label, ``edge`` px inside it (half that where the
    region is too small) and ``min_dist`` from each other and from ``taken``."""
    out: list[list[int]] = []
    if count <= 0:
        return out
    for margin in (edge, edge / 2):
        offsets = np.array([[0, 0], [margin, 0], [-margin, 0], [0, margin], [0, -margin]])
        for _ in range(12):
            if len(out) >= count:
                return out
            cand = _candidates(rng, layout, want_label, 256)
            if not len(cand):
                return out
            xs = cand[:, 0, None] + offsets[None, :, 0]
            ys = cand[:, 1, None] + offsets[None, :, 1]
            ok = (layout.label_at(xs, ys) == want_label).all(axis=1)
            for x, y in cand[ok]:
                pts = np.asarray(taken + out, float).reshape(-1, 2)
                if len(pts) and np.min(np.hypot(pts[:, 0] - x, pts[:, 1] - y)) < min_dist:
                    continue
                out.append([int(x), int(y)])
                if len(out) >= count:
                    return out
    return out


def make_layout(width: int, height: int, seed: int, tumors: int = 2, holes: bool = True,
                mitoses: int = 40, mimics: int = 20, mitosis_tumor_fraction: float = 0.8,
                tissue_blobs: tuple[int, int] = (1, 3), mitosis_kinds: int = 24,
                mimic_kinds: int = 12) -> SlideLayout:
    """A deterministic slide layout: 1-3 tissue blobs, ``tumors`` regions inside them (the first
    with an exclusion hole when ``holes``), and mitoses/mimics at least 64 px apart in tissue."""
    rng = np.random.default_rng([seed, 1])
    side = min(width, height)
    tissue: list[Polygon] = []
    blobs: list[tuple[float, float, float, float]] = []  # cx, cy, rmin, rmax
    n_blobs = int(rng.integers(tissue_blobs[0], tissue_blobs[1] + 1))
    for _ in range(n_blobs):
        for _attempt in range(200):
            radius = side * rng.uniform(0.15, 0.24) * (1.0 if not blobs else 0.8)
            margin = radius * 1.5
            if margin * 2 >= min(width, height):
                radius = side / 4
                margin = radius * 1.5
            cx = rng.uniform(margin, width - margin)
            cy = rng.uniform(margin, height - margin)
            if all(np.hypot(cx - bx, cy - by) > margin + br * 1.05 for bx, by, _, br in blobs):
                poly, rmin, rmax = star_polygon(rng, cx, cy, radius, vertices=128)
                tissue.append(poly)
                blobs.append((cx, cy, rmin, rmax))
                break
    regions: list[TumorRegion] = []
    placed: list[tuple[float, float, float]] = []
    for i in range(tumors):
        for _attempt in range(200):
            bx, by, brmin, _ = blobs[int(rng.integers(len(blobs)))]
            radius = brmin * rng.uniform(0.3, 0.45)
            rough = 0.2
            max_r = radius * (1 + 2.2 * rough)
            d = rng.uniform(0, max(0.0, 0.9 * brmin - max_r))
            ang = rng.uniform(0, 2 * np.pi)
            cx, cy = bx + d * np.cos(ang), by + d * np.sin(ang)
            if d + max_r > 0.95 * brmin:
                continue
            if any(np.hypot(cx - px, cy - py) < max_r + pr + 20 for px, py, pr in placed):
                continue
            poly, rmin, rmax = star_polygon(rng, cx, cy, radius, vertices=64, roughness=rough)
            region = TumorRegion(polygon=poly)
            if holes and (i == 0 or rng.uniform() < 0.3):
                hole_r = rmin * 0.3
                hole, _, hmax = star_polygon(rng, cx, cy, hole_r, vertices=24, roughness=0.15)
                if hmax < 0.9 * rmin:
                    region.holes.append(hole)
            regions.append(region)
            placed.append((cx, cy, rmax))
            break
    layout = SlideLayout(width=width, height=height, seed=seed, tissue=tissue, tumors=regions,
                         mitoses=[], mimics=[])
    place_figures(layout, rng, mitoses, mimics, mitosis_tumor_fraction, mitosis_kinds, mimic_kinds)
    return layout


def place_figures(layout: SlideLayout, rng: np.random.Generator, mitoses: int, mimics: int,
                  tumor_fraction: float = 0.8, mitosis_kinds: int = 24, mimic_kinds: int = 12,
                  min_dist: float = 64, edge: float = 32) -> None:
    """Put mitoses (``tumor_fraction`` in tumor when there is one) and mimics (half in tumor)
    at least ``min_dist`` apart and ``edge`` px inside their region; fills ``layout`` in place."""
    has_tumor = bool(layout.tumors)
    n_tumor = int(round(mitoses * tumor_fraction)) if has_tumor else 0
    found = _place_points(rng, layout, n_tumor, LABEL_TUMOR, [], min_dist, edge)
    found += _place_points(rng, layout, mitoses - len(found), LABEL_TISSUE, found, min_dist, edge)
    layout.mitoses = found
    n_tumor = mimics // 2 if has_tumor else 0
    fakes = _place_points(rng, layout, n_tumor, LABEL_TUMOR, found, min_dist, edge)
    fakes += _place_points(rng, layout, mimics - len(fakes), LABEL_TISSUE, found + fakes, min_dist, edge)
    layout.mimics = fakes
    layout.mitosis_kinds = [int(k) for k in rng.integers(0, mitosis_kinds, len(layout.mitoses))]
    layout.mimic_kinds = [int(k) for k in rng.integers(0, mimic_kinds, len(layout.mimics))]


def make_field_layout(width: int, height: int, seed: int, mitoses: int, mimics: int,
                      tumor_fraction: float = 0.9) -> SlideLayout:
    """A high-power field: tissue everywhere, one large tumor blob, figures >= 24 px from edges."""
    rng = np.random.default_rng([seed, 3])
    tissue = [[[-8.0, -8.0], [width + 8.0, -8.0], [width + 8.0, height + 8.0], [-8.0, height + 8.0]]]
    side = min(width, height)
    poly, _, _ = star_polygon(rng, width * rng.uniform(0.4, 0.6), height * rng.uniform(0.4, 0.6),
                              side * rng.uniform(0.38, 0.48), vertices=64, roughness=0.2)
    layout = SlideLayout(width=width, height=height, seed=seed, tissue=tissue,
                         tumors=[TumorRegion(polygon=poly)], mitoses=[], mimics=[])
    place_figures(layout, rng, mitoses, mimics, tumor_fraction, min_dist=48, edge=24)
    return layout


def sample_points(layout: SlideLayout, label: str, count: int, seed: int, edge: float = 64) -> list[list[int]]:
    """Patch centres (level 0) inside tumor, or in tissue outside tumor (``label='normal'``),
    ``edge`` px from the region border where the region is big enough (less where it is not)."""
    want = {"tumor": LABEL_TUMOR, "normal": LABEL_TISSUE}[label]
    rng = np.random.default_rng([seed, 2, want])
    out: list[list[int]] = []
    if want == LABEL_TUMOR and not layout.tumors:
        return out
    for margin in (edge, edge / 2, edge / 4, 0.0):
        offsets = np.array([[0, 0], [margin, margin], [-margin, margin], [margin, -margin], [-margin, -margin]])
        for _ in range(10):
            if len(out) >= count:
                return out
            if want == LABEL_TUMOR:
                cand = _candidates(rng, layout, want, 512)
            else:
                cand = np.round(np.stack([rng.uniform(0, layout.width, 512),
                                          rng.uniform(0, layout.height, 512)], 1)).astype(int)
            xs = cand[:, 0, None] + offsets[None, :, 0]
            ys = cand[:, 1, None] + offsets[None, :, 1]
            ok = (layout.label_at(xs, ys) == want).all(axis=1)
            out += [[int(x), int(y)] for x, y in cand[ok][: count - len(out)]]
    return out
