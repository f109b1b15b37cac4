"""The direct JPEG-tile path: the same pixels as OpenSlide everywhere it is used, OpenSlide elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from medray.errors import SlideError
from medray.slides.jpeg_tiles import JpegTileReader
from medray.slides.reader import open_slide
from slide_factory import make_slide


@pytest.fixture(scope="module")
def tissue(tmp_path_factory):
    """1536×1280, 3 levels ×2 (all integer downsamples), 256² JPEG tiles; edge tiles partly outside."""
    path, _, _ = make_slide(tmp_path_factory.mktemp("tiles") / "tissue.tiff", width=1500, height=1260)
    return path


def _random_regions(slide, level: int, count: int, rng) -> list[tuple[int, int, int, int]]:
    """(x, y, w, h) in level-0 x/y, level w/h, at whole level coordinates, inside the level."""
    ds = int(round(slide.level_downsamples[level]))
    lw, lh = slide.level_dimensions[level]
    out = []
    for _ in range(count):
        w, h = (int(v) for v in rng.integers(1, min(600, lw, lh), 2))
        out.append((int(rng.integers(0, lw - w + 1)) * ds, int(rng.integers(0, lh - h + 1)) * ds, w, h))
    return out


def test_direct_reads_equal_openslide_at_every_level(tissue):
    rng = np.random.default_rng(0)
    with open_slide(str(tissue)) as fast, open_slide(str(tissue), tile_decode=False) as plain:
        assert plain.direct_tile_levels == ()
        assert fast.direct_tile_levels == tuple(range(fast.level_count))
        for level in range(fast.level_count):
            regions = _random_regions(fast, level, 25, rng)
            regions += [(0, 0, 256, 256)] + ([(256, 256, 512, 256)] if level == 0 else [])  # whole tiles
            for x, y, w, h in regions:
                assert np.array_equal(fast.read_region(x, y, level, (w, h)), plain.read_region(x, y, level, (w, h))), \
                    (level, x, y, w, h)
            buffer = np.empty(512 * 256, np.uint32)
            bgrx = fast.read_region_bgrx(0, 0, level, (256, 256), out=buffer)
            assert np.shares_memory(bgrx, buffer) and (bgrx[..., 3] == 255).all()
            assert np.array_equal(bgrx[..., 2::-1], plain.read_region(0, 0, level, 256))
        assert fast._tiles._verified == {level: True for level in range(fast.level_count)}  # each level checked


def test_fractional_level_coordinates_go_through_openslide(tissue):
    """OpenSlide resamples a region that starts between level pixels; the direct path must not guess."""
    with open_slide(str(tissue)) as fast, open_slide(str(tissue), tile_decode=False) as plain:
        for x, y in ((3, 0), (1, 5), (515, 257)):  # not multiples of level 2's downsample of 4
            assert np.array_equal(fast.read_region(x, y, 2, 64), plain.read_region(x, y, 2, 64))


def test_a_level_that_fails_its_check_is_never_used(tissue):
    reader = JpegTileReader.for_slide(str(tissue), "generic-tiff", ((1500, 1260), (750, 630), (375, 315)))
    assert reader is not None and reader.levels == (0, 1, 2)
    out = np.empty((256, 256), np.uint32)
    assert not reader.read(0, 0, 0, out, lambda tx, ty, ref: ref.fill(0))  # "OpenSlide" disagrees
    assert not reader.read(0, 256, 256, out, lambda tx, ty, ref: pytest.fail("checked only once"))
    assert reader.read(1, 0, 0, out, lambda tx, ty, ref: ref.__setitem__(..., reader._decode(
        reader._levels[1], 0).view(np.uint32).reshape(256, 256)[:ref.shape[0], :ref.shape[1]]))
    assert not reader.read(1, 700, 0, out, lambda *a: None)  # leaves the level: not for this path
    reader.close()
    assert not reader.read(1, 0, 0, out, lambda *a: None)


def test_only_jpeg_tiff_formats_qualify(tissue, tmp_path):
    assert JpegTileReader.for_slide(str(tissue), "hamamatsu", ((1500, 1260),)) is None  # other formats: OpenSlide
    lzw = tmp_path / "lzw.tiff"
    with tifffile.TiffWriter(lzw) as tif:
        tif.write(np.full((512, 512, 3), 200, np.uint8), tile=(256, 256), compression="zlib", photometric="rgb")
    assert JpegTileReader.for_slide(str(lzw), "generic-tiff", ((512, 512),)) is None
    with open_slide(str(lzw)) as slide:
        assert slide.direct_tile_levels == () and slide.read_region(0, 0, 0, 64).min() == 200


def _damaged_copy(path, tmp_path, index: int, damage: str):
    page = tifffile.TiffFile(path).pages[0]
    offset, count = int(page.dataoffsets[index]), int(page.databytecounts[index])
    data = bytearray(path.read_bytes())
    if damage == "zero-tail":
        data[offset + count // 2:offset + count] = bytes(count - count // 2)
    elif damage == "garbage":
        data[offset + count // 3:offset + count // 3 + 200] = np.random.default_rng(0).integers(
            0, 256, 200, dtype=np.uint8).tobytes()
    else:  # the end-of-image marker gone
        data[offset + count - 2:offset + count] = b"\0\0"
    out = tmp_path / f"damaged-{index}-{damage}.tiff"
    out.write_bytes(bytes(data))
    return out


def _outcome(path, tile_decode: bool, x: int, y: int):
    with open_slide(str(path), tile_decode=tile_decode) as slide:
        try:
            return slide.read_region(x, y, 0, (min(256, slide.dimensions[0] - x), 256))
        except SlideError as err:
            return str(err)


def test_damaged_tiles_fail_exactly_when_openslide_fails(tissue, tmp_path):
    """libjpeg only warns about broken entropy data; OpenSlide fails such reads, so the direct
    path must too (strict decoding), never hand out grey pixels where OpenSlide would refuse."""
    errors = 0
    for index in (0, 3, 7, 9, 15):  # tiles across: 6
        for damage in ("zero-tail", "garbage", "no-eoi"):
            damaged = _damaged_copy(tissue, tmp_path, index, damage)
            x, y = (index % 6) * 256, (index // 6) * 256
            fast, plain = _outcome(damaged, True, x, y), _outcome(damaged, False, x, y)
            if isinstance(plain, str):
                errors += 1
                assert fast == plain and f"reading region x={x}, y={y}" in fast and "OpenSlide says" in fast
            else:
                assert np.array_equal(fast, plain), (index, damage)
    assert errors >= 8  # most of these damages are errors for OpenSlide (some decode, in both paths)


def test_a_damaged_first_tile_does_not_turn_the_direct_path_off(tissue, tmp_path):
    damaged = _damaged_copy(tissue, tmp_path, 0, "zero-tail")
    with open_slide(str(damaged)) as slide, open_slide(str(tissue), tile_decode=False) as good:
        with pytest.raises(SlideError, match=r"reading region x=0, y=0, .*OpenSlide says"):
            slide.read_region(0, 0, 0, 256)
        assert slide._tiles._verified == {}  # undecided, not refused
        assert np.array_equal(slide.read_region(256, 0, 0, 256), good.read_region(256, 0, 0, 256))
        assert slide._tiles._verified == {0: True}


def _decodes_for_half_tile_strips(path, monkeypatch) -> tuple[int, int]:
    """(tile decodes, tiles touched) reading level 0 as 128-px-high strips of 128² patches, row by
    row, the order a scoring unit reads them; pixels checked against OpenSlide on the way."""
    with open_slide(str(path)) as fast, open_slide(str(path), tile_decode=False) as plain:
        fast.read_region(0, 0, 0, 16)  # the level's one-off check against OpenSlide
        reader = fast._tiles
        reader._cache.clear()
        decodes = []
        decode = reader._decode

        def counted(spec, index, out=None):
            decodes.append(index)
            return decode(spec, index, out)

        monkeypatch.setattr(reader, "_decode", counted)
        w, h = fast.level_dimensions[0]
        width = w // 128 * 128
        for y in range(0, h - 127, 128):
            strip = fast.read_region(0, y, 0, (width, 128))
            assert np.array_equal(strip, plain.read_region(0, y, 0, (width, 128))), y
        return len(decodes), len(set(decodes))


def test_a_tile_row_stays_decoded_for_the_next_strip(tissue, monkeypatch):
    """Patches half a tile high read each tile row twice; the cache keeps a whole row, so every
    tile is decoded once. With a cache smaller than a row (the old fixed 32 tiles on a wide
    slide), each tile row is decoded twice."""
    from medray.slides import jpeg_tiles

    monkeypatch.setattr(jpeg_tiles, "CACHE_MIN_TILES", 2)  # this slide is only 6 tiles across
    decodes, touched = _decodes_for_half_tile_strips(tissue, monkeypatch)
    assert decodes == touched == 6 * 5  # 1500 px: 6 tiles across; strips inside the level: 5 tile rows

    monkeypatch.setattr(jpeg_tiles, "CACHE_BYTES", 3 * 256 * 256 * 4)  # 3 tiles: less than a row
    decodes, touched = _decodes_for_half_tile_strips(tissue, monkeypatch)
    assert touched == 30 and decodes == 4 * 6 * 2 + 6  # every tile row read twice decoded twice


def test_cache_size_is_a_tile_row_within_bounds():
    from medray.slides.jpeg_tiles import CACHE_BYTES, CACHE_MIN_TILES, _Level, cache_tiles

    def level(across: int, tile: int = 256) -> _Level:
        return _Level(width=across * tile, height=tile, tile_w=tile, tile_h=tile, tiles_across=across,
                      offsets=np.zeros(across), counts=np.ones(across), prefix=b"")

    assert cache_tiles(level(3)) == CACHE_MIN_TILES
    assert cache_tiles(level(157)) == 159  # a 40,000² level of 256² tiles: one row and two more
    assert cache_tiles(level(391)) == CACHE_BYTES // (256 * 256 * 4)  # a 100,000² level: capped at 64 MiB
    assert cache_tiles(level(391, tile=512)) == 64  # 1 MiB tiles: 64 MiB is 64 of them
    assert cache_tiles(level(391, tile=4096)) == 2  # 64 MiB tiles: the cap wins, but 2 are kept
