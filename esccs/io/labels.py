"""Scene-label files: the SEN12MS IGBP pickle (read safely), and JSON / CSV equivalents.

The official SEN12MS scene labels (Schmitt & Wu 2021) are ``IGBP_probability_labels.pkl``: a pickled dict from the
S2 file name (e.g. ``ROIs1158_spring_s2_12_p34.tif``) to a 17-element vector of IGBP class fractions. Unpickling
runs code, so pickles are read with :class:`RestrictedUnpickler`, which only builds plain containers, numbers and
numeric numpy arrays. The same table may be given as JSON (``{"<id>": "<class>" | <index> | [fractions]}``) or as CSV
(``id,label`` or ``id,<K fraction columns>``).

Labels are turned into class indices (single label) or 0/1 vectors (multi-label) by :func:`resolve_labels`:
17-element IGBP vectors are summed into the 10 simplified classes (:data:`esccs.spec.IGBP_TO_SIMPLE`) or kept as the
17 IGBP classes; single label = argmax; multi-label = fraction >= threshold (0.1 in the official code).
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import os
import pickle
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from esccs.errors import LabelError, UnsafePickleError
from esccs.io.atomic import write_text
from esccs.io.names import try_parse_name
from esccs.spec import IGBP_CLASSES, IGBP_SIMPLE_CLASSES, IGBP_TO_SIMPLE, MULTI_LABEL_THRESHOLD

SCHEMES = ("auto", "names", "igbp17", "fractions")
PICKLE_SUFFIXES = (".pkl", ".pickle")
#: numpy dtype kinds a label pickle may hold: bool, signed/unsigned integer, float, complex.
NUMERIC_KINDS = "biufc"
_SEN12MS_LAYOUTS = ("sen12ms", "sen12ms-cr")
_ID_COLUMNS = ("id", "sample_id", "sample", "name", "filename")
_TOL = 1e-6  # fractions are float32 in the real file: 0.1 stored as float32 must still count as >= 0.1

# --------------------------------------------------------------------------------------------------------------------
# Restricted unpickling
# --------------------------------------------------------------------------------------------------------------------

_SAFE_BUILTINS = frozenset(
    {"dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "str", "bytes", "bytearray", "bool"}
)
_PLAIN_TYPES = (str, bytes, bytearray, int, float, complex, bool, type(None))


def _refuse(path: str | os.PathLike, what: str) -> UnsafePickleError:
    return UnsafePickleError(path, f"pickle tries to load {what}; only plain containers and numbers are allowed")


def _numpy_core(submodule: str) -> Any:
    """``numpy._core.<submodule>`` (numpy >= 2) or ``numpy.core.<submodule>`` (numpy 1.x), without deprecation noise."""
    import importlib

    try:
        return importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:  # numpy 1.x
        return importlib.import_module(f"numpy.core.{submodule}")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only builds plain containers, numbers and numeric numpy arrays / scalars.

    Admitted globals: the builtins ``dict list tuple set frozenset int float complex str bytes bytearray bool``,
    ``collections.OrderedDict``, and what numpy needs to rebuild arrays, dtypes and scalars
    (``numpy.core.multiarray._reconstruct`` / ``scalar``, the same under ``numpy._core``, ``numpy.ndarray``,
    ``numpy.dtype``), plus the two helpers that standard pickle protocols use for plain data: ``_codecs.encode``
    (protocol 2 writes ``bytes`` through it; only ``latin1`` is admitted) and ``numpy.core.numeric._frombuffer``
    (numpy writes contiguous arrays through it under protocol 5). The numpy helpers are wrapped so that they refuse
    object (or any non-numeric) dtypes and ndarray subclasses. Persistent ids are refused.

    Args:
        file: A binary file object positioned at the pickle.
        path: The file name used in error messages.
    """

    def __init__(self, file: io.BufferedIOBase | io.BytesIO, path: str | os.PathLike = "<pickle>") -> None:
        # latin1 lets numpy arrays written by Python 2 load; it changes nothing for Python 3 pickles.
        super().__init__(file, encoding="latin1")
        self.path = os.fspath(path)

    def find_class(self, module: str, name: str) -> Any:
        """Return an admitted global, or raise :class:`~esccs.errors.UnsafePickleError`."""
        if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
            import builtins

            return getattr(builtins, name)
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "_codecs" and name == "encode":
            return self._codecs_encode
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return self._dtype
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return self._reconstruct
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "scalar":
            return self._scalar
        if module in ("numpy.core.numeric", "numpy._core.numeric") and name == "_frombuffer":
            return self._frombuffer
        raise _refuse(self.path, f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        """Refuse persistent ids (they resolve to objects outside the pickle)."""
        raise _refuse(self.path, f"persistent id {str(pid)[:40]!r}")

    # --- guarded helpers ------------------------------------------------------------------------------------------

    def _check_dtype(self, dtype: Any) -> np.dtype:
        if not isinstance(dtype, np.dtype) or dtype.kind not in NUMERIC_KINDS or dtype.hasobject:
            raise _refuse(self.path, f"a numpy array or scalar of dtype {str(dtype)[:40]}")
        return dtype

    def _dtype(self, spec: Any, *args: Any) -> np.dtype:
        if not isinstance(spec, (str, bytes)):
            raise _refuse(self.path, f"numpy.dtype({type(spec).__name__})")
        return self._check_dtype(np.dtype(spec, *args[:2]))

    def _reconstruct(self, cls: Any, shape: Any, dtype_code: Any) -> np.ndarray:
        if cls is not np.ndarray:
            raise _refuse(self.path, f"numpy array subclass {getattr(cls, '__name__', cls)!r}")
        return _numpy_core("multiarray")._reconstruct(np.ndarray, shape, dtype_code)

    def _scalar(self, dtype: Any, *data: Any) -> Any:
        self._check_dtype(dtype)
        return _numpy_core("multiarray").scalar(dtype, *data)

    def _frombuffer(self, buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
        self._check_dtype(dtype)
        if not isinstance(buf, (bytes, bytearray, pickle.PickleBuffer)):
            raise _refuse(self.path, f"numpy._frombuffer({type(buf).__name__})")
        return _numpy_core("numeric")._frombuffer(buf, dtype, shape, order)

    def _codecs_encode(self, obj: Any, encoding: Any = "utf-8", *rest: Any) -> bytes:
        if not isinstance(obj, str) or encoding != "latin1" or rest:
            raise _refuse(self.path, "_codecs.encode with anything but (str, 'latin1')")
        return obj.encode("latin1")


def _check_plain(obj: Any, path: str | os.PathLike) -> None:
    """Walk a loaded object (iteratively) and refuse anything but plain containers, numbers and numeric arrays."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
        elif isinstance(item, (np.ndarray, np.generic)):
            if type(item) is not np.ndarray and not isinstance(item, np.generic):
                raise _refuse(path, f"numpy array subclass {type(item).__name__}")
            if item.dtype.kind not in NUMERIC_KINDS or item.dtype.hasobject:
                raise _refuse(path, f"a numpy array of dtype {item.dtype}")
        elif not isinstance(item, _PLAIN_TYPES):
            raise _refuse(path, f"an object of type {type(item).__module__}.{type(item).__qualname__}")


def safe_load_pickle(path: str | os.PathLike) -> Any:
    """Unpickle a file with :class:`RestrictedUnpickler` and check that the result is plain data.

    Raises:
        UnsafePickleError: The pickle references a global outside the allow list, or holds object arrays.
        LabelError: The file is missing, empty or not a readable pickle.
    """
    data = _read_bytes(path)
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), path).load()
    except UnsafePickleError:
        raise
    except RecursionError:
        raise LabelError(path, "pickle is nested too deeply") from None
    except Exception as exc:  # noqa: BLE001 - any failure of a corrupt pickle becomes one LabelError
        raise LabelError(path, f"not a readable pickle ({type(exc).__name__}: {_one_line(exc)})") from None
    _check_plain(obj, path)
    return obj


# --------------------------------------------------------------------------------------------------------------------
# Reading and writing label tables
# --------------------------------------------------------------------------------------------------------------------


def _one_line(exc: BaseException, limit: int = 120) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_bytes(path: str | os.PathLike) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise LabelError(path, "label file not found" if not p.exists() else "label path is not a file")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise LabelError(path, f"cannot read label file ({_one_line(exc)})") from None
    if not data.strip():
        raise LabelError(path, "label file is empty")
    return data


def _read_text(path: str | os.PathLike) -> str:
    try:
        return _read_bytes(path).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LabelError(path, f"label file is not UTF-8 text ({_one_line(exc)})") from None


def base_key(key: Any) -> str:
    """Strip a label key to its base name (the SEN12MS key is the S2 file's base name)."""
    if isinstance(key, bytes):
        key = key.decode("utf-8", "replace")
    return str(key).strip().replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def _normalise_keys(raw: Mapping[Any, Any], path: str | os.PathLike) -> dict[str, object]:
    table: dict[str, object] = {}
    for key, value in raw.items():
        if not isinstance(key, (str, bytes)):
            raise LabelError(path, f"label keys must be sample names, got {type(key).__name__} {key!r:.40}")
        name = base_key(key)
        if not name:
            raise LabelError(path, f"empty label key {key!r:.40}")
        if name in table:
            raise LabelError(path, f"duplicate label key {name!r}")
        table[name] = value
    if not table:
        raise LabelError(path, "label file holds no labels")
    return table


def _json_value(value: Any, key: str, path: str | os.PathLike) -> object:
    if isinstance(value, bool) or value is None or isinstance(value, dict):
        raise LabelError(path, f"label of {key!r} must be a class name, an index or a list of fractions")
    if isinstance(value, list):
        if value and all(isinstance(v, str) for v in value):
            return list(value)  # multi-label class names
        if not value or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise LabelError(path, f"label of {key!r} is a list but not of numbers")
        return np.asarray(value, dtype=np.float64)
    return value


def _parse_cell(cell: str) -> int | str:
    text = cell.strip()
    try:
        return int(text)
    except ValueError:
        return text


def _read_csv(path: str | os.PathLike) -> dict[str, object]:
    rows = [r for r in csv.reader(io.StringIO(_read_text(path))) if any(c.strip() for c in r)]
    header = [c.strip().casefold() for c in rows[0]] if rows else []
    if len(header) < 2 or header[0] not in _ID_COLUMNS:
        raise LabelError(path, "CSV header must be 'id,label' or 'id,<fraction columns>'")
    raw: dict[str, object] = {}
    for lineno, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise LabelError(path, f"line {lineno}: {len(row)} columns, the header has {len(header)}")
        key = row[0].strip()
        if key in raw:
            raise LabelError(path, f"line {lineno}: duplicate id {key!r}")
        if len(header) == 2:
            if not row[1].strip():
                raise LabelError(path, f"line {lineno}: empty label for {key!r}")
            raw[key] = _parse_cell(row[1])
            continue
        try:
            raw[key] = np.array([float(c) for c in row[1:]], dtype=np.float64)
        except ValueError:
            raise LabelError(path, f"line {lineno}: fraction columns must be numbers") from None
    return raw


def load_label_table(path: str | os.PathLike) -> dict[str, object]:
    """Read a label table: sample id (base name) -> label, by the file's suffix.

    ``.pkl`` / ``.pickle``: a pickled dict (the SEN12MS ``IGBP_probability_labels.pkl``), read with
    :class:`RestrictedUnpickler`. ``.json``: an object ``id -> class name | class index | [fractions]``.
    ``.csv``: header ``id,label`` (class name or integer index) or ``id,<K numeric columns>`` (fraction vectors).

    Args:
        path: The label file.

    Returns:
        The table, keys stripped to base names; values are str, int, list of str or numpy vectors.

    Raises:
        UnsafePickleError: A pickle tries to load anything but plain data.
        LabelError: The file is missing, empty, corrupt, of an unknown suffix or not a table.
    """
    suffix = Path(path).suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raw = safe_load_pickle(path)
        if not isinstance(raw, dict):
            raise LabelError(path, f"pickle holds a {type(raw).__name__}, expected a dict of sample name -> label")
    elif suffix == ".json":
        try:
            raw = json.loads(_read_text(path))
        except json.JSONDecodeError as exc:
            raise LabelError(path, f"not valid JSON ({_one_line(exc)})") from None
        if not isinstance(raw, dict):
            raise LabelError(path, f"JSON holds a {type(raw).__name__}, expected an object of id -> label")
        raw = {k: _json_value(v, k, path) for k, v in raw.items()}
    elif suffix == ".csv":
        raw = _read_csv(path)
    else:
        raise LabelError(path, f"unknown label file type {suffix or '(none)'!r}; expected .pkl, .json or .csv")
    return _normalise_keys(raw, path)


def _plain(value: Any) -> Any:
    if isinstance(value, (np.ndarray, list, tuple)):
        arr = np.asarray(value)
        return arr.tolist() if arr.dtype.kind in "OUS" else [float(v) for v in arr.ravel()]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return value
    raise ValueError(f"cannot write label {value!r:.40}: expected a class name, an index or a vector")


def write_label_table(path: str | os.PathLike, mapping: Mapping[str, Any]) -> Path:
    """Atomically write a label table as ``.json`` or ``.csv`` (readable by :func:`load_label_table`).

    CSV gets ``id,label`` when every label is a name or index, else ``id,f0,...`` fraction columns (all vectors
    must then have one length).

    Raises:
        ValueError: Unknown suffix, or labels that do not fit the format.
    """
    suffix = Path(path).suffix.lower()
    plain = {base_key(k): _plain(v) for k, v in mapping.items()}
    if suffix == ".json":
        return write_text(path, json.dumps(plain, indent=1) + "\n")
    if suffix != ".csv":
        raise ValueError(f"cannot write labels as {suffix or '(none)'!r}; expected .json or .csv")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    vectors = [v for v in plain.values() if isinstance(v, list)]
    if not vectors:
        writer.writerow(["id", "label"])
        writer.writerows([k, v] for k, v in plain.items())
    else:
        width = {len(v) for v in vectors}
        if len(vectors) != len(plain) or len(width) != 1:
            raise ValueError("CSV labels must be all names/indices or all fraction vectors of one length")
        writer.writerow(["id", *(f"f{i}" for i in range(width.pop()))])
        writer.writerows([k, *(repr(x) for x in v)] for k, v in plain.items())
    return write_text(path, buf.getvalue())


# --------------------------------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------------------------------


def _lookup_key(key: str, known: set[str] | Mapping[str, Any]) -> str | None:
    """The entry of ``known`` that ``key`` names: exact, or differing only by a ``.tif`` suffix."""
    if key in known:
        return key
    alt = key[:-4] if key.lower().endswith(".tif") else key + ".tif"
    return alt if alt in known else None


def check_keys(
    table: Mapping[str, Any],
    known_ids: Iterable[str],
    path: str | os.PathLike = "<labels>",
    *,
    strict: bool = True,
    layout: str | None = None,
) -> list[str]:
    """Find label keys that match no sample.

    A key matches a sample when it equals a known id (base names; a ``.tif`` suffix may differ). With a SEN12MS
    layout (``sen12ms`` / ``sen12ms-cr``) the official label file covers all 180,662 patches while a download may
    hold a part, so unmatched keys that are well-formed SEN12MS names are tolerated; other layouts tolerate none.
    If no key matches any sample at all, every key is bad (a label file of another data set).

    Args:
        table: The label table (from :func:`load_label_table`).
        known_ids: The data set's sample ids.
        path: The label file, for messages.
        strict: Raise on bad keys (default); otherwise return them.
        layout: The data set's layout name, if known.

    Returns:
        The bad keys, sorted (empty when all is well).

    Raises:
        LabelError: ``strict`` and some keys are bad: ``"N label keys match no sample (e.g. 'xyz')"``.
    """
    known = {base_key(k) for k in known_ids}
    unmatched = [k for k in table if _lookup_key(base_key(k), known) is None]
    if len(unmatched) == len(table):
        bad = sorted(unmatched)
    elif layout in _SEN12MS_LAYOUTS:
        bad = sorted(k for k in unmatched if try_parse_name(base_key(k)) is None)
    else:
        bad = sorted(unmatched)
    if bad and strict:
        none = len(unmatched) == len(table)
        extra = f"; none of the {len(table)} keys matches any of the {len(known)} samples" if none else ""
        raise LabelError(path, f"{len(bad)} label keys match no sample (e.g. {bad[0]!r}){extra}")
    return bad


# --------------------------------------------------------------------------------------------------------------------
# Label values -> class indices
# --------------------------------------------------------------------------------------------------------------------


def igbp_to_simple(fractions: Any) -> np.ndarray:
    """Sum 17 IGBP class fractions into the 10 simplified classes (last axis 17 -> 10).

    Forest = IGBP 1-5, Shrubland = 6-7, Savanna = 8-9, Grassland = 10, Wetlands = 11, Croplands = 12 + 14,
    Urban = 13, Snow/Ice = 15, Barren = 16, Water = 17.

    Raises:
        ValueError: The last axis does not have 17 entries.
    """
    arr = np.asarray(fractions, dtype=np.float64)
    if arr.ndim == 0 or arr.shape[-1] != len(IGBP_CLASSES):
        raise ValueError(f"IGBP fraction vectors have {len(IGBP_CLASSES)} entries, got shape {arr.shape}")
    out = np.zeros((*arr.shape[:-1], len(IGBP_SIMPLE_CLASSES)), dtype=np.float64)
    for igbp, simple in enumerate(IGBP_TO_SIMPLE):
        out[..., simple] += arr[..., igbp]
    return out


def _is_vector(value: Any) -> bool:
    if isinstance(value, (str, bytes)):
        return False
    if isinstance(value, np.ndarray):
        return value.ndim == 1
    return isinstance(value, (list, tuple)) and not all(isinstance(v, str) for v in value)


def _auto_scheme(value: Any, classes: Sequence[str]) -> str:
    if _is_vector(value):
        n = len(value)
        if n == len(IGBP_CLASSES) and tuple(classes) in (IGBP_SIMPLE_CLASSES, IGBP_CLASSES):
            return "igbp17"
        return "fractions"
    return "names"


def _where(path: str | os.PathLike, key: str | None) -> str:
    return f"label of {key!r}" if key is not None else "label"


def class_fractions(
    value: Any, classes: Sequence[str], scheme: str, *, path: str | os.PathLike = "<labels>", key: str | None = None
) -> np.ndarray:
    """Turn a fraction vector into per-class fractions over ``classes`` (``igbp17`` or ``fractions`` scheme).

    Raises:
        LabelError: Wrong length, non-finite or negative fractions, or all zero.
    """
    where = _where(path, key)
    try:
        vec = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise LabelError(path, f"{where} is not a vector of numbers") from None
    if vec.ndim != 1:
        raise LabelError(path, f"{where} must be a 1-D vector, got shape {vec.shape}")
    if scheme == "igbp17":
        if len(vec) != len(IGBP_CLASSES):
            raise LabelError(path, f"{where} has {len(vec)} fractions, IGBP vectors have {len(IGBP_CLASSES)}")
        if tuple(classes) == IGBP_SIMPLE_CLASSES:
            vec = igbp_to_simple(vec)
        elif tuple(classes) != IGBP_CLASSES:
            raise LabelError(path, "17-element IGBP vectors need the 'igbp' or 'igbp_simple' class list")
    elif len(vec) != len(classes):
        raise LabelError(path, f"{where} has {len(vec)} fractions for {len(classes)} classes")
    if not np.all(np.isfinite(vec)) or np.any(vec < 0):
        raise LabelError(path, f"{where} has negative or non-finite fractions")
    if not np.any(vec > 0):
        raise LabelError(path, f"{where} has all fractions zero")
    return vec


def _name_index(
    value: Any, classes: Sequence[str], path: str | os.PathLike, key: str | None
) -> int:
    where = _where(path, key)
    if isinstance(value, (bool, np.bool_)):
        raise LabelError(path, f"{where} is a boolean, expected a class name or index")
    if isinstance(value, (int, np.integer)):
        if not 0 <= int(value) < len(classes):
            raise LabelError(path, f"{where}: class index {int(value)} is outside 0..{len(classes) - 1}")
        return int(value)
    if not isinstance(value, str):
        raise LabelError(path, f"{where} is a {type(value).__name__}, expected a class name or index")
    name = value.strip()
    if name in classes:
        return list(classes).index(name)
    folded = [c.casefold() for c in classes]
    if folded.count(name.casefold()) == 1:
        return folded.index(name.casefold())
    close = difflib.get_close_matches(name, list(classes), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else f"; classes are {list(classes)}"
    raise LabelError(path, f"{where}: unknown class {name!r}{hint}")


def to_class_index(
    value: Any,
    classes: Sequence[str],
    scheme: str = "auto",
    *,
    path: str | os.PathLike = "<labels>",
    key: str | None = None,
) -> int:
    """Turn one label into a class index (single label).

    Args:
        value: A class name, an integer index, or a fraction vector (17 IGBP fractions or one per class).
        classes: The class list.
        scheme: ``auto`` (by the value's type and length), ``names``, ``igbp17`` or ``fractions``.
        path: The label file, for messages.
        key: The sample id, for messages.

    Returns:
        The class index: the named / given class, or the argmax of the (simplified) fractions.

    Raises:
        LabelError: Unknown class name (with close names), index out of range, or a bad vector.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown label scheme {scheme!r}; expected one of {SCHEMES}")
    if scheme == "auto":
        scheme = _auto_scheme(value, classes)
    if scheme == "names":
        if isinstance(value, (list, tuple)) and len(value) == 1:
            value = value[0]
        return _name_index(value, classes, path, key)
    return int(np.argmax(class_fractions(value, classes, scheme, path=path, key=key)))


def to_multi_hot(
    value: Any,
    classes: Sequence[str],
    scheme: str = "auto",
    *,
    threshold: float = MULTI_LABEL_THRESHOLD,
    path: str | os.PathLike = "<labels>",
    key: str | None = None,
) -> np.ndarray:
    """Turn one label into a float32 0/1 vector over ``classes`` (fraction >= threshold; names: those named)."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown label scheme {scheme!r}; expected one of {SCHEMES}")
    if scheme == "auto":
        scheme = _auto_scheme(value, classes)
    out = np.zeros(len(classes), dtype=np.float32)
    if scheme == "names":
        names = value if isinstance(value, (list, tuple)) else [value]
        for name in names:
            out[_name_index(name, classes, path, key)] = 1.0
        return out
    fractions = class_fractions(value, classes, scheme, path=path, key=key)
    out[fractions >= threshold - _TOL] = 1.0
    return out


def resolve_labels(
    table: Mapping[str, Any],
    ids: Iterable[str],
    classes: Sequence[str],
    *,
    scheme: str = "auto",
    multi_label: bool = False,
    threshold: float = MULTI_LABEL_THRESHOLD,
    path: str | os.PathLike = "<labels>",
) -> dict[str, int | np.ndarray]:
    """Resolve the labels of the given samples.

    Args:
        table: The label table (from :func:`load_label_table`).
        ids: The sample ids to label (S2 file names for SEN12MS); looked up by base name.
        classes: The class list (e.g. :data:`esccs.spec.IGBP_SIMPLE_CLASSES`).
        scheme: ``auto``, ``names``, ``igbp17`` or ``fractions`` (see :func:`to_class_index`).
        multi_label: Return float32 0/1 vectors (fraction >= ``threshold``) instead of class indices.
        threshold: The multi-label presence threshold (0.1 in the official code).
        path: The label file, for messages.

    Returns:
        ``id -> class index`` (single label) or ``id -> float32 vector of len(classes)`` (multi-label).

    Raises:
        LabelError: A sample has no label, or a label is invalid (the message names the file and the id).
    """
    if not classes:
        raise LabelError(path, "the class list is empty")
    out: dict[str, int | np.ndarray] = {}
    missing: list[str] = []
    for sample_id in ids:
        key = _lookup_key(base_key(sample_id), table)
        if key is None:
            missing.append(sample_id)
            continue
        value = table[key]
        if multi_label:
            out[sample_id] = to_multi_hot(value, classes, scheme, threshold=threshold, path=path, key=key)
        else:
            out[sample_id] = to_class_index(value, classes, scheme, path=path, key=key)
    if missing:
        raise LabelError(path, f"{len(missing)} samples have no label (e.g. {base_key(missing[0])!r})")
    return out
