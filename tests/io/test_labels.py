import functools
import io
import json
import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest

from esccs.errors import LabelError, UnsafePickleError
from esccs.io.labels import (
    RestrictedUnpickler,
    check_keys,
    igbp_to_simple,
    load_label_table,
    resolve_labels,
    to_class_index,
    write_label_table,
)
from esccs.spec import IGBP_CLASSES, IGBP_SIMPLE_CLASSES

IDS = [
    "ROIs1158_spring_s2_1_p10.tif",
    "ROIs1868_summer_s2_146_p3.tif",
    "ROIs1970_fall_s2_7_p101.tif",
    "ROIs2017_winter_s2_149_p5.tif",
]


def igbp(**codes):
    """A 17-vector of IGBP fractions from {'c<code>': fraction}."""
    vec = np.zeros(17, dtype=np.float32)
    for name, frac in codes.items():
        vec[int(name[1:]) - 1] = frac
    return vec


def real_table():
    return {
        IDS[0]: igbp(c1=0.3, c2=0.3, c12=0.25, c14=0.15),  # Forest 0.6, Croplands 0.4
        IDS[1]: igbp(c12=0.3, c14=0.3, c13=0.4),  # Croplands 0.6 beats Urban 0.4 only by summing 12 + 14
        IDS[2]: igbp(c17=0.81, c10=0.09, c16=0.1),  # Water; Grassland 0.09 is out, Barren 0.1 is in
        IDS[3]: igbp(c15=1.0),  # Snow/Ice
    }


EXPECTED_SIMPLE = {IDS[0]: 0, IDS[1]: 5, IDS[2]: 9, IDS[3]: 7}


def write_pickle(path, obj, protocol=4):
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


# --- the real-format pickle ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_real_format_pickle_round_trips(tmp_path, protocol):
    table = real_table()
    path = write_pickle(tmp_path / "IGBP_probability_labels.pkl", table, protocol)
    loaded = load_label_table(path)
    assert set(loaded) == set(table)
    for key, vec in table.items():
        assert isinstance(loaded[key], np.ndarray)
        assert loaded[key].dtype == np.float32
        np.testing.assert_array_equal(loaded[key], vec)
    assert resolve_labels(loaded, IDS, IGBP_SIMPLE_CLASSES, path=path) == EXPECTED_SIMPLE


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pickle_with_numpy_scalars_and_plain_containers(tmp_path, protocol):
    obj = {
        "a": [np.float32(0.5), np.int64(3), 1.5, 2, True, None, 1 + 2j, b"x", bytearray(b"y")],
        "b": (frozenset({1, 2}), {3}),
        "c": OrderedDict(x=np.arange(4, dtype=np.uint16).reshape(2, 2)),
        "d": np.asfortranarray(np.ones((3, 2))),
    }
    path = write_pickle(tmp_path / "plain.pkl", obj, protocol)
    with open(path, "rb") as f:
        loaded = RestrictedUnpickler(f, path).load()
    assert loaded["a"][0] == np.float32(0.5) and loaded["a"][1] == 3 and loaded["a"][6] == 1 + 2j
    assert loaded["b"] == (frozenset({1, 2}), {3})
    np.testing.assert_array_equal(loaded["c"]["x"], obj["c"]["x"])
    np.testing.assert_array_equal(loaded["d"], obj["d"])


def test_keys_are_stripped_to_base_names(tmp_path):
    table = {f"some/dir/{IDS[0]}": igbp(c17=1.0), f"  {IDS[1]} ": igbp(c13=1.0)}
    loaded = load_label_table(write_pickle(tmp_path / "l.pkl", table))
    assert set(loaded) == {IDS[0], IDS[1]}


def test_pickle_that_is_not_a_dict(tmp_path):
    with pytest.raises(LabelError, match="expected a dict"):
        load_label_table(write_pickle(tmp_path / "l.pkl", [1, 2, 3]))


# --- IGBP mapping ---------------------------------------------------------------------------------------------------


def test_igbp_to_simple_croplands_is_12_plus_14():
    simple = igbp_to_simple(igbp(c12=0.2, c14=0.3, c13=0.5))
    assert simple.shape == (10,)
    assert simple[IGBP_SIMPLE_CLASSES.index("Croplands")] == pytest.approx(0.5)
    assert simple[IGBP_SIMPLE_CLASSES.index("Urban/Built-up")] == pytest.approx(0.5)
    assert simple.sum() == pytest.approx(1.0)


def test_igbp_to_simple_groups():
    eye = igbp_to_simple(np.eye(17))
    assert eye.shape == (17, 10)
    expected = [0, 0, 0, 0, 0, 1, 1, 2, 2, 3, 4, 5, 6, 5, 7, 8, 9]
    assert list(eye.argmax(axis=1)) == expected
    with pytest.raises(ValueError):
        igbp_to_simple(np.ones(10))


def test_single_label_is_argmax_after_summing():
    # Urban alone (0.4) is the largest IGBP class, but Croplands (12 + 14 = 0.6) wins after simplification.
    vec = igbp(c12=0.3, c14=0.3, c13=0.4)
    assert to_class_index(vec, IGBP_SIMPLE_CLASSES, "igbp17") == IGBP_SIMPLE_CLASSES.index("Croplands")
    assert to_class_index(vec, IGBP_CLASSES, "igbp17") == 12  # kept as 17 classes: Urban (code 13)
    assert to_class_index(vec, IGBP_SIMPLE_CLASSES, "auto") == 5


def test_multi_label_threshold():
    table = real_table()
    out = resolve_labels(table, [IDS[2]], IGBP_SIMPLE_CLASSES, multi_label=True)
    vec = out[IDS[2]]
    assert vec.dtype == np.float32 and vec.shape == (10,)
    assert vec[IGBP_SIMPLE_CLASSES.index("Water")] == 1.0
    assert vec[IGBP_SIMPLE_CLASSES.index("Barren")] == 1.0  # 0.1 is in
    assert vec[IGBP_SIMPLE_CLASSES.index("Grassland")] == 0.0  # 0.09 is out
    assert vec.sum() == 2.0
    # A different threshold.
    out = resolve_labels(table, [IDS[2]], IGBP_SIMPLE_CLASSES, multi_label=True, threshold=0.05)
    assert out[IDS[2]].sum() == 3.0


def test_multi_label_with_17_classes():
    vec = resolve_labels({IDS[0]: igbp(c12=0.05, c14=0.15, c1=0.8)}, [IDS[0]], IGBP_CLASSES, multi_label=True)[IDS[0]]
    assert vec.shape == (17,)
    assert list(np.flatnonzero(vec)) == [0, 13]


def test_igbp_vector_needs_igbp_class_list():
    with pytest.raises(LabelError, match="igbp"):
        to_class_index(igbp(c1=1.0), ["a", "b"], "igbp17")


def test_bad_fraction_vectors():
    with pytest.raises(LabelError, match="all fractions zero"):
        to_class_index(np.zeros(17), IGBP_SIMPLE_CLASSES, "igbp17")
    with pytest.raises(LabelError, match="negative or non-finite"):
        to_class_index(np.full(17, np.nan), IGBP_SIMPLE_CLASSES, "igbp17")
    with pytest.raises(LabelError, match="3 fractions for 10 classes"):
        to_class_index([0.1, 0.2, 0.7], IGBP_SIMPLE_CLASSES, "fractions")


# --- unsafe pickles ------------------------------------------------------------------------------------------------


class Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.target}",))


def test_malicious_pickle_is_refused_without_side_effect(tmp_path):
    marker = tmp_path / "pwned.txt"
    path = write_pickle(tmp_path / "evil.pkl", {IDS[0]: Evil(marker)})
    with pytest.raises(UnsafePickleError) as err:
        load_label_table(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "posix.system" in msg or "os.system" in msg or "nt.system" in msg
    assert "only plain containers and numbers are allowed" in msg
    assert not marker.exists()
    assert isinstance(err.value, LabelError)


@pytest.mark.parametrize(
    "obj",
    [
        functools.partial(int, "3"),
        {"k": functools.partial(print, "x")},
        {"k": np.array([1, "x"], dtype=object)},
        {"k": np.array([None, None])},
        {"k": np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")])},
        {"k": np.array(["a", "b"])},
        {"k": np.ma.masked_array([1.0, 2.0])},
        {"k": eval},
        {"k": Exception("x")},
    ],
    ids=["partial", "partial-in-dict", "object-array", "none-array", "structured", "str-array", "masked", "eval",
         "exception"],
)
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_unsafe_objects_are_refused(tmp_path, obj, protocol):
    path = write_pickle(tmp_path / "bad.pkl", obj, protocol)
    with pytest.raises(UnsafePickleError, match="only plain containers and numbers"):
        load_label_table(path)


def test_handcrafted_global_opcodes_are_refused(tmp_path):
    # protocol 0 text pickle calling builtins.eval and subprocess.check_output directly
    for payload in (b"cbuiltins\neval\n(S'1+1'\ntR.", b"csubprocess\ncheck_output\n((S'true'\nltR."):
        path = tmp_path / "raw.pkl"
        path.write_bytes(payload)
        with pytest.raises(UnsafePickleError, match="tries to load"):
            load_label_table(path)


def test_codecs_encode_only_latin1_strings(tmp_path):
    path = tmp_path / "raw.pkl"
    path.write_bytes(b"c_codecs\nencode\n(S'abc'\nS'rot13'\ntR.")
    with pytest.raises(UnsafePickleError):
        load_label_table(path)


def test_persistent_ids_are_refused(tmp_path):
    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return "ext-1" if obj == "ref" else None

    buf = io.BytesIO()
    P(buf, protocol=4).dump({"a": "ref"})
    path = tmp_path / "pid.pkl"
    path.write_bytes(buf.getvalue())
    with pytest.raises(UnsafePickleError, match="persistent id"):
        load_label_table(path)


# --- JSON and CSV equivalents --------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_json_and_csv_give_the_same_labels_as_pickle(tmp_path, suffix):
    table = real_table()
    pkl = load_label_table(write_pickle(tmp_path / "l.pkl", table))
    other = tmp_path / f"l{suffix}"
    write_label_table(other, table)
    loaded = load_label_table(other)
    assert set(loaded) == set(pkl)
    for multi in (False, True):
        a = resolve_labels(pkl, IDS, IGBP_SIMPLE_CLASSES, multi_label=multi)
        b = resolve_labels(loaded, IDS, IGBP_SIMPLE_CLASSES, multi_label=multi)
        for key in IDS:
            np.testing.assert_array_equal(a[key], b[key])
    assert resolve_labels(loaded, IDS, IGBP_SIMPLE_CLASSES) == EXPECTED_SIMPLE


def test_handwritten_json(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({IDS[0]: "Water", IDS[1]: 3, IDS[2]: igbp(c13=1.0).tolist(), IDS[3]: ["Water"]}))
    table = load_label_table(path)
    out = resolve_labels(table, IDS, IGBP_SIMPLE_CLASSES, path=path)
    assert out == {IDS[0]: 9, IDS[1]: 3, IDS[2]: 6, IDS[3]: 9}


def test_csv_with_class_names(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("id,label\nimg_001,Harbor\nimg_002, Water \nimg_003,0\n\n")
    classes = ("Barren", "Dense Forests", "Water", "Harbor")
    table = load_label_table(path)
    assert table == {"img_001": "Harbor", "img_002": "Water", "img_003": 0}
    assert resolve_labels(table, ["img_001", "img_002", "img_003"], classes, path=path) == {
        "img_001": 3, "img_002": 2, "img_003": 0,
    }
    # ids given with a .tif suffix find labels keyed without it
    assert resolve_labels(table, ["img_001.tif"], classes) == {"img_001.tif": 3}
    multi = resolve_labels(table, ["img_001"], classes, multi_label=True)["img_001"]
    assert multi.tolist() == [0, 0, 0, 1]


def test_csv_written_with_names_round_trips(tmp_path):
    mapping = {"a": "Water", "b": np.int64(2), "c": "Harbor"}
    path = write_label_table(tmp_path / "sub" / "l.csv", mapping)
    assert load_label_table(path) == {"a": "Water", "b": 2, "c": "Harbor"}
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp file left behind


def test_csv_fraction_columns(tmp_path):
    path = tmp_path / "f.csv"
    path.write_text("id,a,b,c\nx,0.1,0.7,0.2\ny,0.5,0.0,0.5\n")
    table = load_label_table(path)
    assert resolve_labels(table, ["x", "y"], ["a", "b", "c"]) == {"x": 1, "y": 0}


def test_unknown_class_name_names_file_id_and_label(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("id,label\nimg_001,Harbour\n")
    with pytest.raises(LabelError) as err:
        resolve_labels(load_label_table(path), ["img_001"], ("Water", "Harbor"), path=path)
    msg = str(err.value)
    assert str(path) in msg and "img_001" in msg and "'Harbour'" in msg
    assert "did you mean 'Harbor'" in msg
    assert "\n" not in msg


def test_class_index_out_of_range(tmp_path):
    with pytest.raises(LabelError, match="outside 0..1"):
        to_class_index(5, ("a", "b"), "names")


def test_missing_label_for_a_sample(tmp_path):
    with pytest.raises(LabelError, match="1 samples have no label"):
        resolve_labels({"a": 0}, ["a", "b"], ("x", "y"))


# --- keys ------------------------------------------------------------------------------------------------------------


def test_label_keys_matching_no_sample(tmp_path):
    path = tmp_path / "labels.json"
    table = {"xyz": "Water", "abc": "Water"}
    with pytest.raises(LabelError) as err:
        check_keys(table, IDS, path)
    msg = str(err.value)
    assert str(path) in msg and "2 label keys match no sample (e.g. 'abc')" in msg
    assert check_keys(table, IDS, path, strict=False) == ["abc", "xyz"]


def test_some_unknown_keys(tmp_path):
    table = {IDS[0]: "Water", "junk": "Water", "ROIs1158_spring_s2_99_p1.tif": "Water"}
    # generic layouts: every unmatched key is bad
    with pytest.raises(LabelError, match=r"2 label keys match no sample \(e.g. 'ROIs1158"):
        check_keys(table, IDS, "l.json")
    # SEN12MS layouts: the official file covers patches not downloaded; only malformed names are bad
    with pytest.raises(LabelError, match=r"1 label keys match no sample \(e.g. 'junk'\)"):
        check_keys(table, IDS, "l.json", layout="sen12ms")
    assert check_keys(table, IDS, "l.json", layout="sen12ms", strict=False) == ["junk"]
    assert check_keys({IDS[0]: 1, "ROIs1158_spring_s2_99_p1.tif": 2}, IDS, layout="sen12ms-cr") == []
    assert check_keys({IDS[0]: 1}, [f"/root/ROIs1158_spring/s2_1/{IDS[0]}"]) == []


# --- unreadable files ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("missing.pkl", None, "not found"),
        ("empty.pkl", b"", "empty"),
        ("empty.csv", b"  \n", "empty"),
        ("corrupt.pkl", b"\x80\x04\x95garbage", "not a readable pickle"),
        ("truncated.pkl", pickle.dumps({"a": np.ones(17)}, protocol=4)[:-20], "not a readable pickle"),
        ("corrupt.json", b"{not json", "not valid JSON"),
        ("list.json", b"[1, 2]", "expected an object"),
        ("empty-object.json", b"{}", "no labels"),
        ("bad.csv", b"foo,bar\n1,2\n", "CSV header"),
        ("ragged.csv", b"id,label\na,1,2\n", "line 2"),
        ("nonnum.csv", b"id,a,b\nx,0.1,zz\n", "line 2"),
        ("binary.csv", b"id,label\n\xff\xfe\x00\x01", "not UTF-8"),
        ("labels.txt", b"a b", "unknown label file type"),
    ],
)
def test_unreadable_label_files(tmp_path, name, content, reason):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(LabelError, match=reason) as err:
        load_label_table(path)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_write_label_table_refuses_unknown_suffix(tmp_path):
    with pytest.raises(ValueError):
        write_label_table(tmp_path / "l.txt", {"a": 1})
    with pytest.raises(ValueError):
        write_label_table(tmp_path / "l.csv", {"a": 1, "b": [0.1, 0.9]})


@pytest.mark.parametrize("protocol", [2, 3])
def test_numpy1_module_names_load(tmp_path, protocol, recwarn):
    # The real file was written by numpy 1.x, whose pickles name numpy.core.multiarray (numpy 2 names numpy._core).
    data = pickle.dumps(real_table(), protocol=protocol)
    old = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in old and b"numpy._core" not in old
    path = tmp_path / "old.pkl"
    path.write_bytes(old)
    loaded = load_label_table(path)
    assert resolve_labels(loaded, IDS, IGBP_SIMPLE_CLASSES) == EXPECTED_SIMPLE
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]
