"""Annotation readers (ASAP XML, point CSV, GeoJSON), containment, rasters and bounds checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medray.errors import AnnotationError
from medray.slides.annotations import (
    Annotation,
    bounds_check,
    contains,
    load_annotations,
    rasterize,
    read_asap_xml,
    read_geojson,
    read_point_csv,
    write_asap_xml,
    write_geojson,
    write_point_csv,
)

# A Camelyon16-style file: two tumour polygons (_0 and _1 groups), one exclusion (_2) inside the
# first, with a decimal comma as some of the real files have.
ASAP_XML = b"""<?xml version="1.0"?>
<ASAP_Annotations>
  <Annotations>
    <Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="_0" Color="#F4FA58">
      <Coordinates>
        <Coordinate Order="0" X="100" Y="100" />
        <Coordinate Order="1" X="500" Y="100" />
        <Coordinate Order="3" X="100" Y="500" />
        <Coordinate Order="2" X="500" Y="500" />
      </Coordinates>
    </Annotation>
    <Annotation Name="Annotation 1" Type="Polygon" PartOfGroup="_1" Color="#F4FA58">
      <Coordinates>
        <Coordinate Order="0" X="700" Y="700" />
        <Coordinate Order="1" X="900" Y="700" />
        <Coordinate Order="2" X="800,5" Y="900" />
      </Coordinates>
    </Annotation>
    <Annotation Name="Annotation 2" Type="Polygon" PartOfGroup="_2" Color="#64FE2E">
      <Coordinates>
        <Coordinate Order="0" X="200" Y="200" />
        <Coordinate Order="1" X="300" Y="200" />
        <Coordinate Order="2" X="300" Y="300" />
        <Coordinate Order="3" X="200" Y="300" />
      </Coordinates>
    </Annotation>
  </Annotations>
  <AnnotationGroups />
</ASAP_Annotations>
"""


def test_asap_exclusion_is_a_hole():
    annotations = read_asap_xml(ASAP_XML)
    assert [a.label for a in annotations] == ["tumor", "tumor"]
    square, triangle = annotations
    np.testing.assert_array_equal(square.exterior, [[100, 100], [500, 100], [500, 500], [100, 500]])
    assert len(square.holes) == 1 and not triangle.holes
    assert triangle.exterior[2].tolist() == [800.5, 900.0]
    points = np.array([[150, 150], [250, 250], [450, 450], [800, 750], [600, 600], [299, 201]])
    np.testing.assert_array_equal(contains(annotations, points), [True, False, True, True, False, False])
    assert square.area == pytest.approx(400 * 400 - 100 * 100)


def test_asap_round_trip(tmp_path):
    uri = str(tmp_path / "slide.xml")
    write_asap_xml(read_asap_xml(ASAP_XML), uri)
    again = load_annotations(uri)
    assert len(again) == 2 and len(again[0].holes) == 1
    np.testing.assert_array_equal(again[0].holes[0], [[200, 200], [300, 200], [300, 300], [200, 300]])


def test_asap_malformed():
    with pytest.raises(AnnotationError, match="not valid XML"):
        read_asap_xml(b"<ASAP_Annotations><Annotations>")
    bad = ASAP_XML.replace(b'X="900"', b'X="nine"')
    with pytest.raises(AnnotationError, match=r"annotation 'Annotation 1'.*'nine' is not a number"):
        read_asap_xml(bad)


def test_point_csv_round_trip_header_and_errors(tmp_path):
    points = np.array([[10, 20], [30, 40], [12345, 67890]])
    uri = str(tmp_path / "tumor.csv")
    write_point_csv(points, uri)
    np.testing.assert_array_equal(load_annotations(uri, label="tumor"), points)
    with_header = tmp_path / "normal.csv"
    with_header.write_text("x,y\n1,2\n\n3,4\n")
    np.testing.assert_array_equal(read_point_csv(str(with_header), "normal"), [[1, 2], [3, 4]])
    broken = tmp_path / "broken.csv"
    broken.write_text("1,2\n3\n5,6\nseven,8\n9,10,11\n")
    with pytest.raises(AnnotationError, match=r"normal points file .*broken\.csv.*3 malformed row\(s\).*"
                                              r"line 2: '3'; line 4: 'seven,8'; line 5: '9,10,11'"):
        read_point_csv(str(broken), "normal")
    with pytest.raises(AnnotationError, match="pass label="):
        load_annotations(uri)


def test_geojson_qupath_shapes_and_round_trip(tmp_path):
    doc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"classification": {"name": "Tumor", "colorRGB": -1}},
         "geometry": {"type": "Polygon", "coordinates": [
             [[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]],
             [[40, 40], [60, 40], [60, 60], [40, 60], [40, 40]]]}},
        {"type": "Feature", "properties": {"name": "Stroma"},
         "geometry": {"type": "MultiPolygon", "coordinates": [
             [[[200, 0], [300, 0], [300, 100], [200, 0]]],
             [[[400, 0], [500, 0], [500, 100], [400, 0]]]]}},
        {"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [5, 5]}},
    ]}
    path = tmp_path / "qupath.geojson"
    path.write_text(json.dumps(doc))
    with pytest.warns(UserWarning, match="skipped non-polygon features {'Point': 1}"):
        annotations = load_annotations(str(path))
    assert [a.label for a in annotations] == ["tumor", "stroma", "stroma"]
    assert len(annotations[0].holes) == 1 and annotations[0].exterior.shape == (4, 2)
    np.testing.assert_array_equal(contains(annotations, [[10, 10], [50, 50], [290, 50], [210, 50]]),
                                  [True, False, True, False])
    # A single Feature and a bare list of features are accepted too.
    assert len(read_geojson(json.dumps(doc["features"][0]).encode())) == 1
    with pytest.warns(UserWarning):
        assert len(read_geojson(json.dumps(doc["features"]).encode())) == 3
    out = str(tmp_path / "out.geojson")
    write_geojson(annotations, out)
    again = read_geojson(out)
    assert [a.label for a in again] == ["tumor", "stroma", "stroma"]
    np.testing.assert_array_equal(again[0].holes[0], annotations[0].holes[0])


def test_load_from_s3(s3_bucket, s3_options):
    from medray.storage import atomic_write_bytes

    uri = f"{s3_bucket}/annotations/tumor_001.xml"
    atomic_write_bytes(uri, ASAP_XML, s3_options)
    annotations = load_annotations(uri, s3_options)
    assert len(annotations) == 2 and len(annotations[0].holes) == 1
    with pytest.raises(AnnotationError, match="cannot be read"):
        load_annotations(f"{s3_bucket}/annotations/missing.xml", s3_options)
    with pytest.raises(AnnotationError, match=r"unknown annotation format '\.txt'"):
        load_annotations(f"{s3_bucket}/annotations/notes.txt", s3_options)


def test_rasterize_pixel_centres():
    square = Annotation("tumor", [[0, 0], [40, 0], [40, 40], [0, 40]], holes=[[[10, 10], [30, 10], [30, 30], [10, 30]]])
    mask = rasterize([square], (6, 6), downsample=10)
    expected = np.zeros((6, 6), bool)
    expected[:4, :4] = True
    expected[1:3, 1:3] = False
    np.testing.assert_array_equal(mask, expected)


def test_bounds_check_names_coordinates():
    square = Annotation("tumor", [[10, 10], [120, 10], [120, 50], [10, 50]])
    bounds_check([square], (200, 100), "tumor_001.xml")
    with pytest.raises(AnnotationError, match=r"tumor_001\.xml: 2 coordinate\(s\) lie off the slide "
                                              r"\(level-0 size 100×100\): \(120, 10\), \(120, 50\)"):
        bounds_check([square], (100, 100), "tumor_001.xml")
    with pytest.raises(AnnotationError, match=r"points\.csv: 1 coordinate.*\(-5, 3\)"):
        bounds_check(np.array([[1, 1], [-5, 3]]), (100, 100), "points.csv")


def test_polygon_validation():
    with pytest.raises(AnnotationError, match="at least 3 vertices"):
        Annotation("tumor", [[0, 0], [1, 1]])
