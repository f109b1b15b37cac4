"""Pure H&E-like rendering of any slide region at any downsample, tile by tile.

Stain is built in optical density (Beer-Lambert): eosin stroma with value-noise texture plus
hematoxylin nuclei pasted from precomputed stamp banks. Nuclei sit on a global lattice hashed
from the seed, so tiles join seamlessly and every pyramid level shows the same cells.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from medray.synth.layout import LABEL_TISSUE, LABEL_TUMOR, SlideLayout, label_region

# Ruifrok & Johnston stain vectors (OD per unit stain, RGB)
HEMATOXYLIN = np.array([0.65, 0.70, 0.29], np.float32)
EOSIN = np.array([0.07, 0.99, 0.11], np.float32)
BACKGROUND_OD = np.array([0.055, 0.06, 0.05], np.float32)  # ~240 grey-white glass

CELL = 32  # level-0 px per nucleus lattice cell
TRANSMIT_K = 0.55  # mean OD per unit stain over R, G, B: converts stamp OD to transmittance
FIGURE_CLEARANCE = 18  # level-0 px kept free of lattice nuclei around mitoses and mimics
SMOOTH_FROM_DOWNSAMPLE = 32  # at and above this, nuclei are averaged into the stain, not pasted
# per label: (candidates per cell, presence probability, bank)
NUCLEI = {LABEL_TISSUE: (1, 0.32, "normal"), LABEL_TUMOR: (2, 0.62, "tumor")}
BANK_SIZES = {"normal": 24, "tumor": 40, "mitosis": 48, "mimic": 36}
BANK_COUNTS = {"normal": 48, "tumor": 64, "mitosis": 24, "mimic": 12}


def _mix(h: np.ndarray, key) -> np.ndarray:
    """One splitmix64 round folding ``key`` into the running hash ``h`` (uint64 arrays)."""
    h = h ^ (np.asarray(key).astype(np.int64).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
             + (h << np.uint64(6)) + (h >> np.uint64(2)))
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def _to_unit(h: np.ndarray) -> np.ndarray:
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _hash_uniform(*keys) -> np.ndarray:
    """Uniform [0, 1) floats from integer keys (splitmix64 mixing, vectorized, deterministic)."""
    h = np.zeros(np.broadcast(*[np.asarray(k) for k in keys]).shape, np.uint64)
    for key in keys:
        h = _mix(h, key)
    return _to_unit(h)


def _hash_streams(n: int, *keys) -> list[np.ndarray]:
    """``n`` independent uniform arrays for the same keys (one base hash, one round each)."""
    h = np.zeros(np.broadcast(*[np.asarray(k) for k in keys]).shape, np.uint64)
    for key in keys:
        h = _mix(h, key)
    return [_to_unit(_mix(h, j)) for j in range(n)]


def _soft(d: np.ndarray, width: float = 0.8) -> np.ndarray:
    """Anti-aliased inside-ness from a signed distance (negative inside)."""
    return 1.0 / (1.0 + np.exp(d / width))


def _ellipse(size: int, cx, cy, a, b, angle, wobble=None) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx, dy = xx - cx, yy - cy
    c, s = np.cos(angle), np.sin(angle)
    u, v = dx * c + dy * s, -dx * s + dy * c
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    if wobble is not None:
        theta = np.arctan2(v, u)
        rho = rho / (1 + sum(amp * np.sin(k * theta + ph) for k, amp, ph in wobble))
    return _soft((rho - 1) * min(a, b))


def _nucleus_bank(kind: str, seed: int = 0) -> np.ndarray:
    """(n, 2, s, s) float32 stamps: channel 0 hematoxylin OD, channel 1 eosin OD."""
    size, count = BANK_SIZES[kind], BANK_COUNTS[kind]
    rng = np.random.default_rng([seed, {"normal": 11, "tumor": 12, "mitosis": 13, "mimic": 14}[kind]])
    bank = np.zeros((count, 2, size, size), np.float32)
    c = size / 2
    for i in range(count):
        grain = rng.normal(0, 1, (size, size)).astype(np.float32)
        if kind == "normal":
            if rng.uniform() < 0.55:  # spindle stromal nucleus
                a, b, od = rng.uniform(7, 10), rng.uniform(2.5, 3.5), rng.uniform(0.55, 0.75)
            else:  # small round lymphocyte-like
                a = b = rng.uniform(4.5, 6.0)
                od = rng.uniform(0.65, 0.85)
            body = _ellipse(size, c, c, a, b, rng.uniform(0, np.pi))
            bank[i, 0] = body * od * (1 + 0.08 * grain)
        elif kind == "tumor":  # large, pleomorphic, coarse chromatin, nucleoli
            a, b = rng.uniform(10, 16), rng.uniform(8, 12.5)
            wobble = [(k, rng.uniform(0, 0.12), rng.uniform(0, 6.3)) for k in (2, 3, 5)]
            angle = rng.uniform(0, np.pi)
            body = _ellipse(size, c, c, a, b, angle, wobble)
            od = rng.uniform(0.85, 1.15)
            chrom = 1 + 0.25 * np.clip(grain, -2, 2)
            nucleolus = _ellipse(size, c + rng.uniform(-3, 3), c + rng.uniform(-3, 3), 2.2, 2.2, 0.0)
            rim = body * (1 - _ellipse(size, c, c, a - 2, b - 2, angle, wobble))  # membrane
            bank[i, 0] = body * od * chrom + 0.5 * nucleolus * body + 0.25 * np.clip(rim, 0, 1)
            bank[i, 1] = 0.15 * _ellipse(size, c, c, a + 5, b + 5, angle) * (1 - body)
        elif kind == "mitosis":  # dark clumped chromosomes: metaphase bar, anaphase pair, clumps
            yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
            style, angle = i % 3, rng.uniform(0, np.pi)
            centres = []
            if style == 0:  # metaphase plate: jagged bar
                length = rng.uniform(24, 32)
                for t in np.linspace(-0.5, 0.5, 16):
                    centres.append((t * length, rng.normal(0, 1.5), rng.uniform(3.5, 5.0)))
            elif style == 1:  # anaphase: two parallel bars
                gap, length = rng.uniform(6, 8), rng.uniform(20, 28)
                for side in (-1, 1):
                    for t in np.linspace(-0.5, 0.5, 10):
                        centres.append((t * length, side * gap + rng.normal(0, 1.0), rng.uniform(3.0, 4.2)))
            else:  # prometaphase clumps
                for _ in range(int(rng.integers(8, 13))):
                    r, th = rng.uniform(0, 10), rng.uniform(0, 2 * np.pi)
                    centres.append((r * np.cos(th), r * np.sin(th), rng.uniform(3.5, 5.0)))
            ca, sa = np.cos(angle), np.sin(angle)
            field = np.zeros((size, size), np.float32)
            for u, v, r in centres:
                px, py = c + u * ca - v * sa, c + u * sa + v * ca
                field = np.maximum(field, _soft(np.hypot(xx - px, yy - py) - r, 0.7))
            hairs = field * (1 + 0.3 * np.clip(grain, -2, 2))
            bank[i, 0] = hairs * rng.uniform(2.6, 3.0)
            clear = _ellipse(size, c, c, 17, 14, angle) * (1 - field)
            bank[i, 1] = -0.12 * clear  # pale halo of the rounded-up mitotic cell
        else:  # mimic: apoptotic body, round dark homogeneous, eosinophilic halo
            r = rng.uniform(6.5, 9.5)
            body = _ellipse(size, c, c, r, r * rng.uniform(0.9, 1.0), 0.0)
            bank[i, 0] = body * rng.uniform(2.5, 2.9) * (1 + 0.03 * grain)
            bank[i, 1] = 0.55 * _ellipse(size, c, c, r + 5, r + 5, 0.0) * (1 - body)
    return bank


@lru_cache(maxsize=64)
def stamp_bank(kind: str, downsample: int) -> np.ndarray:
    """The bank for ``kind`` block-averaged to ``downsample`` in transmittance (not OD), so a
    reduced level is about as light as the average of the level-0 pixels it stands for."""
    bank = _nucleus_bank(kind)
    if downsample == 1:
        return bank
    n, ch, s, _ = bank.shape
    padded = int(np.ceil(s / downsample)) * downsample
    lo = (padded - s) // 2
    big = np.zeros((n, ch, padded, padded), np.float32)
    big[:, :, lo:lo + s, lo:lo + s] = bank
    k = padded // downsample
    transmit = np.exp(-TRANSMIT_K * big).reshape(n, ch, k, downsample, k, downsample).mean(axis=(3, 5))
    return (-np.log(transmit) / TRANSMIT_K).astype(np.float32)


def paste(canvas: np.ndarray, stamps: np.ndarray, rows: np.ndarray, cols: np.ndarray,
          weights: np.ndarray, overlap: str = "add") -> None:
    """Put ``stamps`` (n, ch, s, s) times ``weights`` into ``canvas`` (ch, H, W) at top-left
    (rows, cols), clipping at the borders (one slice op per stamp: stamps are few and small).
    ``overlap='max'`` keeps overlapping nuclei from summing into false dark spots."""
    _, h, w = canvas.shape
    s = stamps.shape[-1]
    used = [c for c in range(stamps.shape[1]) if np.any(stamps[:, c])]
    if len(rows) > 256 and s <= 8:  # many tiny stamps (low-res levels): one bincount, summed
        ar = np.arange(s)
        rr = np.broadcast_to(rows[:, None, None] + ar[None, :, None], (len(rows), s, s))
        cc = np.broadcast_to(cols[:, None, None] + ar[None, None, :], (len(rows), s, s))
        ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        flat = (rr * w + cc)[ok]
        for ch in used:
            vals = (stamps[:, ch] * weights[:, None, None])[ok]
            canvas[ch] += np.bincount(flat, weights=vals, minlength=h * w).reshape(h, w).astype(np.float32)
        return
    for stamp, r, c, wt in zip(stamps, rows.tolist(), cols.tolist(), weights.tolist()):
        r0, c0 = max(r, 0), max(c, 0)
        r1, c1 = min(r + s, h), min(c + s, w)
        if r1 <= r0 or c1 <= c0:
            continue
        part = stamp[:, r0 - r:r1 - r, c0 - c:c1 - c]
        for ch in used:
            if overlap == "max":
                view = canvas[ch, r0:r1, c0:c1]
                np.maximum(view, part[ch] * wt, out=view)
            else:
                canvas[ch, r0:r1, c0:c1] += part[ch] * wt


def value_noise(x0: float, y0: float, ds: float, shape: tuple[int, int], spacing: tuple[float, float],
                seed: int, channel: int) -> np.ndarray:
    """Smooth lattice noise in [0, 1] at level-0 scale ``spacing`` (x, y); flat 0.5 when the
    lattice would alias at this downsample."""
    h, w = shape
    sx, sy = spacing
    if sx / ds < 1.5 or sy / ds < 1.5:
        return np.full(shape, 0.5, np.float32)
    gx = (x0 + (np.arange(w) + 0.5) * ds) / sx
    gy = (y0 + (np.arange(h) + 0.5) * ds) / sy
    ix0, iy0 = int(np.floor(gx[0])), int(np.floor(gy[0]))
    ix = np.arange(ix0, int(np.floor(gx[-1])) + 2)
    iy = np.arange(iy0, int(np.floor(gy[-1])) + 2)
    grid = _hash_uniform(seed, channel, iy[:, None], ix[None, :]).astype(np.float32)
    fx, fy = gx - np.floor(gx), gy - np.floor(gy)
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    cx = np.floor(gx).astype(int) - ix0
    cy = np.floor(gy).astype(int) - iy0
    along_x = grid[:, cx] * (1 - fx)[None, :] + grid[:, cx + 1] * fx[None, :]
    return (along_x[cy] * (1 - fy)[:, None] + along_x[cy + 1] * fy[:, None]).astype(np.float32)


def _lattice_nuclei(layout: SlideLayout, labels: np.ndarray, x0: float, y0: float, ds: int,
                    margin: int, canvas: np.ndarray) -> None:
    """Paste every lattice nucleus whose centre falls in the (margin-padded) region, leaving
    room around mitoses and mimics so those figures stay distinct."""
    h, w = labels.shape
    lx0, ly0 = x0 - margin * ds, y0 - margin * ds
    figures = np.asarray(layout.mitoses + layout.mimics, float).reshape(-1, 2)
    figures = figures[(figures[:, 0] > lx0 - 64) & (figures[:, 0] < lx0 + w * ds + 64)
                      & (figures[:, 1] > ly0 - 64) & (figures[:, 1] < ly0 + h * ds + 64)]
    cx = np.arange(int(np.floor(lx0 / CELL)), int(np.ceil((lx0 + w * ds) / CELL)))
    cy = np.arange(int(np.floor(ly0 / CELL)), int(np.ceil((ly0 + h * ds) / CELL)))
    gy, gx = np.meshgrid(cy, cx, indexing="ij")
    for label, (per_cell, prob, kind) in NUCLEI.items():
        bank = stamp_bank(kind, ds)
        half = bank.shape[-1] / 2
        for k in range(per_cell):
            u = _hash_streams(5, layout.seed, label * 8 + k, gy, gx)
            px = ((gx + u[0]) * CELL).ravel()  # level-0 centres
            py = ((gy + u[1]) * CELL).ravel()
            cidx = np.floor((px - lx0) / ds).astype(np.int64)
            ridx = np.floor((py - ly0) / ds).astype(np.int64)
            sel = np.nonzero((ridx >= 0) & (ridx < h) & (cidx >= 0) & (cidx < w)
                             & (u[2].ravel() < prob))[0]
            sel = sel[labels[ridx[sel], cidx[sel]] == label]
            if len(figures) and sel.size:
                dist = np.hypot(px[sel, None] - figures[None, :, 0], py[sel, None] - figures[None, :, 1])
                sel = sel[dist.min(axis=1) > FIGURE_CLEARANCE]
            if sel.size == 0:
                continue
            ids = (u[3].ravel()[sel] * len(bank)).astype(np.int64)
            weight = (0.85 + 0.3 * u[4].ravel()[sel]).astype(np.float32)
            top = np.round((py[sel] - ly0) / ds - half).astype(np.int64)
            left = np.round((px[sel] - lx0) / ds - half).astype(np.int64)
            paste(canvas, bank[ids], top, left, weight, overlap="max")


def _mean_nuclear_od(kind: str, per_cell: int, prob: float) -> np.ndarray:
    """Average (H, E) OD that pasted nuclei add per level-0 pixel, for smooth low-res levels."""
    bank = stamp_bank(kind, 1)
    lost = (1 - np.exp(-TRANSMIT_K * bank)).sum(axis=(2, 3)).mean(axis=0) * per_cell * prob / CELL**2
    return (-np.log(np.clip(1 - lost, 1e-3, None)) / TRANSMIT_K).astype(np.float32)


def _figures(points, kinds, kind: str, x0, y0, ds, margin, canvas) -> None:
    """Paste mitoses or mimics (explicit positions) that touch the padded region."""
    if not points:
        return
    bank = stamp_bank(kind, ds)
    half = bank.shape[-1] / 2
    pts = np.asarray(points, float)
    lx0, ly0 = x0 - margin * ds, y0 - margin * ds
    _, h, w = canvas.shape
    cols = (pts[:, 0] - lx0) / ds
    rows = (pts[:, 1] - ly0) / ds
    near = (cols > -half) & (cols < w + half) & (rows > -half) & (rows < h + half)
    if not near.any():
        return
    ids = np.asarray(kinds, np.int64)[near] % len(bank)
    paste(canvas, bank[ids], np.round(rows[near] - half).astype(np.int64),
          np.round(cols[near] - half).astype(np.int64), np.ones(int(near.sum()), np.float32))


def render_region(layout: SlideLayout, x0: float, y0: float, downsample: int, width: int,
                  height: int) -> np.ndarray:
    """RGB uint8 (height, width, 3) of the region whose top-left is level-0 (x0, y0), sampled
    every ``downsample`` level-0 pixels. Pure: same inputs, same pixels."""
    ds = int(downsample)
    margin = int(np.ceil(BANK_SIZES["mitosis"] / 2 / ds)) + 1
    shape = (height + 2 * margin, width + 2 * margin)
    labels = label_region(layout, x0 - margin * ds, y0 - margin * ds, shape, ds)
    inner = labels[margin:-margin, margin:-margin]
    tissue = inner >= LABEL_TISSUE
    tumor = inner == LABEL_TUMOR
    od = np.zeros((2, height, width), np.float32)  # hematoxylin, eosin
    if tissue.any():
        seed = layout.seed
        fib = value_noise(x0, y0, ds, (height, width), (96.0, 10.0), seed, 1)
        blot = value_noise(x0, y0, ds, (height, width), (160.0, 160.0), seed, 2)
        fine = value_noise(x0, y0, ds, (height, width), (6.0, 6.0), seed, 3)
        stroma_e = 0.22 + 0.28 * fib * (0.6 + 0.8 * blot) + 0.06 * fine
        tumor_e = 0.20 + 0.12 * blot + 0.05 * fine
        od[1] = np.where(tumor, tumor_e, np.where(tissue, stroma_e, 0.0))
        od[0] = np.where(tumor, 0.10 + 0.05 * fine, np.where(tissue, 0.03, 0.0))
        canvas = np.zeros((2,) + shape, np.float32)
        if ds < SMOOTH_FROM_DOWNSAMPLE:
            _lattice_nuclei(layout, labels, x0, y0, ds, margin, canvas)
        else:
            for label, (per_cell, prob, kind) in NUCLEI.items():
                mean = _mean_nuclear_od(kind, per_cell, prob)
                canvas[:, labels == label] += mean[:, None]
        _figures(layout.mitoses, layout.mitosis_kinds, "mitosis", x0, y0, ds, margin, canvas)
        _figures(layout.mimics, layout.mimic_kinds, "mimic", x0, y0, ds, margin, canvas)
        od += canvas[:, margin:-margin, margin:-margin] * tissue
    stains = np.stack([HEMATOXYLIN, EOSIN], axis=1)  # (3 rgb, 2 stains)
    od[1] = np.clip(od[1], 0, None)
    total = np.tensordot(stains, od, axes=1) + BACKGROUND_OD[:, None, None]  # (3, h, w)
    rng = np.random.default_rng([layout.seed, ds, int(x0) % 2**32, int(y0) % 2**32])
    rgb = np.exp(-total, dtype=np.float32) * np.float32(255.0)
    rgb += rng.standard_normal((height, width), dtype=np.float32) * np.float32(2.5)
    return np.clip(rgb, 0, 255).astype(np.uint8).transpose(1, 2, 0).copy()
