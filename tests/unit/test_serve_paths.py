"""Slide URIs a request may name: inside the allowed roots only, no `..` or symlink escapes."""

from __future__ import annotations

import os

import pytest

from medray.serve.errors import Forbidden
from medray.serve.paths import check_allowed


@pytest.fixture
def roots(tmp_path):
    allowed = tmp_path / "slides"
    (allowed / "case1").mkdir(parents=True)
    (allowed / "case1" / "a.svs").write_bytes(b"x")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "b.svs").write_bytes(b"y")
    return allowed, secret


def test_file_inside_root_is_returned_as_real_path(roots):
    allowed, _ = roots
    assert check_allowed(str(allowed / "case1" / "a.svs"), [str(allowed)]) == str((allowed / "case1" / "a.svs").resolve())
    assert check_allowed(f"file://{allowed}/case1/./a.svs", [str(allowed)]).endswith("case1/a.svs")


def test_dotdot_escape_is_refused(roots):
    allowed, secret = roots
    with pytest.raises(Forbidden, match="outside the allowed slide roots"):
        check_allowed(f"{allowed}/case1/../../secret/b.svs", [str(allowed)])


def test_sibling_with_common_prefix_is_refused(roots, tmp_path):
    allowed, _ = roots
    (tmp_path / "slides-evil").mkdir()
    with pytest.raises(Forbidden):
        check_allowed(str(tmp_path / "slides-evil" / "x.svs"), [str(allowed)])


def test_symlink_escapes_are_refused(roots):
    allowed, secret = roots
    os.symlink(secret / "b.svs", allowed / "case1" / "link.svs")
    os.symlink(secret, allowed / "linkdir")
    with pytest.raises(Forbidden, match="outside"):
        check_allowed(str(allowed / "case1" / "link.svs"), [str(allowed)])
    with pytest.raises(Forbidden, match="outside"):
        check_allowed(str(allowed / "linkdir" / "b.svs"), [str(allowed)])


def test_symlink_inside_root_is_allowed(roots):
    allowed, _ = roots
    os.symlink(allowed / "case1" / "a.svs", allowed / "alias.svs")
    assert check_allowed(str(allowed / "alias.svs"), [str(allowed)]) == str((allowed / "case1" / "a.svs").resolve())


def test_root_given_through_a_symlink_still_works(roots, tmp_path):
    allowed, _ = roots
    os.symlink(allowed, tmp_path / "current")
    assert check_allowed(str(allowed / "case1" / "a.svs"), [str(tmp_path / "current")]).endswith("a.svs")


def test_s3_prefix_rules():
    roots = ["s3://medray-slides/cohort-a/"]
    assert check_allowed("s3://medray-slides/cohort-a//x/./y.svs", roots) == "s3://medray-slides/cohort-a/x/y.svs"
    with pytest.raises(Forbidden, match="outside"):
        check_allowed("s3://medray-slides/cohort-a/../cohort-b/y.svs", roots)
    with pytest.raises(Forbidden, match="outside"):
        check_allowed("s3://medray-slides/cohort-ab/y.svs", roots)
    with pytest.raises(Forbidden, match="outside"):
        check_allowed("s3://other-bucket/cohort-a/y.svs", roots)
    with pytest.raises(Forbidden, match="climbs above its bucket"):
        check_allowed("s3://medray-slides/../x.svs", roots)


def test_schemes_and_empty_roots(roots):
    allowed, _ = roots
    with pytest.raises(Forbidden, match="no allowed_slide_roots"):
        check_allowed(str(allowed / "case1" / "a.svs"), [])
    with pytest.raises(Forbidden, match="scheme 'http' is not served"):
        check_allowed("http://example.org/a.svs", [str(allowed)])
    with pytest.raises(Forbidden, match="outside"):  # a local path never matches an s3 root
        check_allowed(str(allowed / "case1" / "a.svs"), ["s3://medray-slides/"])
