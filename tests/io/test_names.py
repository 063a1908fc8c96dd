from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esccs.io.names import LAYOUTS, NAME_RE, PatchName, parse_name, try_parse_name
from esccs.spec import SEASON_SEEDS, SENSORS

seasons = st.sampled_from(sorted(SEASON_SEEDS))
sensors = st.sampled_from(SENSORS)
ids = st.integers(min_value=0, max_value=100_000)
patches = st.builds(PatchName, season=seasons, scene=ids, patch=ids, sensor=sensors)

SETTINGS = settings(max_examples=100, deadline=None)


@SETTINGS
@given(patches)
def test_filename_round_trips(p):
    parsed = parse_name(p.filename)
    assert parsed == p
    assert parsed.seed == SEASON_SEEDS[p.season]
    assert try_parse_name(p.filename) == p
    assert parse_name(Path("/some/dir") / p.filename) == p  # a path parses like its base name


@SETTINGS
@given(patches, st.integers(min_value=1000, max_value=9999))
def test_explicit_seed_round_trips(p, seed):
    q = PatchName(p.season, p.scene, p.patch, p.sensor, seed)
    assert q.filename.startswith(f"ROIs{seed}_{p.season}_{p.sensor}_")
    assert parse_name(q.filename) == q


@SETTINGS
@given(patches)
def test_sample_id_is_the_s2_name(p):
    expected = f"ROIs{SEASON_SEEDS[p.season]}_{p.season}_s2_{p.scene}_p{p.patch}.tif"
    assert p.sample_id == expected
    assert parse_name(p.sample_id).sensor == "s2"
    assert p.with_sensor("s1").sample_id == expected
    assert p.with_sensor("s2_cloudy").group == p.group == (p.season, p.scene)


@SETTINGS
@given(patches, st.sampled_from(["data", "/abs/root"]))
def test_sen12ms_layout_path(p, root):
    path = p.path(root, "sen12ms")
    assert path == Path(root) / f"ROIs{p.seed}_{p.season}" / f"{p.sensor}_{p.scene}" / p.filename
    assert parse_name(path) == p


@SETTINGS
@given(patches, st.sampled_from(["data", "/abs/root"]))
def test_sen12ms_cr_layout_path(p, root):
    path = p.path(root, "sen12ms-cr")
    assert path.parts[-3] == f"ROIs{p.seed}_{p.season}_{p.sensor}"
    assert path.parts[-2] == f"{p.sensor}_{p.scene}"
    assert path.name == p.filename
    assert parse_name(path) == p


def test_sen12ms_cr_cloudy_example():
    p = PatchName("spring", 12, 34, "s2_cloudy")
    assert p.path("root", "sen12ms-cr") == Path(
        "root/ROIs1158_spring_s2_cloudy/s2_cloudy_12/ROIs1158_spring_s2_cloudy_12_p34.tif"
    )
    assert p.path("root", "sen12ms") == Path("root/ROIs1158_spring/s2_cloudy_12/ROIs1158_spring_s2_cloudy_12_p34.tif")
    assert parse_name("ROIs1158_spring_s2_cloudy_12_p34.tif") == p
    assert p.sample_id == "ROIs1158_spring_s2_12_p34.tif"


@SETTINGS
@given(patches, st.text(min_size=1, max_size=8).filter(lambda s: "/" not in s))
def test_unknown_layout_raises(p, layout):
    if layout in LAYOUTS:
        return
    with pytest.raises(ValueError, match="unknown layout"):
        p.path("root", layout)


def _mutations(p: PatchName) -> list[str]:
    name = p.filename
    stem = name[: -len(".tif")]
    return [
        stem + ".tiff",
        stem + ".png",
        stem,
        name.replace(f"_p{p.patch}.tif", f"_{p.patch}.tif"),  # missing _p
        name.replace("ROIs", "ROI"),
        name.replace(f"_{p.season}_", "_autumn_"),
        name.replace(f"_{p.sensor}_", "_s3_"),
        name.replace(f"ROIs{p.seed}", f"ROIs{p.seed}0"),  # five-digit seed
        name.replace(f"_{p.scene}_p", "_x_p"),
        "x" + name,
        name + ".aux.xml",
        name.upper(),
    ]


@SETTINGS
@given(patches)
def test_mutated_names_do_not_parse(p):
    for bad in _mutations(p):
        assert try_parse_name(bad) is None, bad
        with pytest.raises(ValueError, match="not a SEN12MS file name"):
            parse_name(bad)


@SETTINGS
@given(st.text(max_size=40))
def test_random_strings_do_not_parse_unless_they_match(text):
    base = Path(text).name if text else text
    result = try_parse_name(text)
    if NAME_RE.match(base) is None:
        assert result is None
        with pytest.raises(ValueError):
            parse_name(text)
    else:
        assert result is not None and result.filename == base


def test_invalid_parts_raise():
    with pytest.raises(ValueError, match="unknown season"):
        PatchName("autumn", 1, 1)
    with pytest.raises(ValueError, match="unknown sensor"):
        PatchName("spring", 1, 1, "s3")
    with pytest.raises(ValueError, match="non-negative"):
        PatchName("spring", -1, 1)
