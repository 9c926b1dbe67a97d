"""Pure data functions of the demo's standard tabular pipeline.

Each input file (CSV, TSV or an Excel workbook, one table per sheet) becomes one or more
tables; each table yields a column summary (:func:`summarize`), a PNG plot (:func:`plot`), a
Parquet copy (:func:`to_parquet`) and a CSV preview (:func:`preview`). All tables together go
into one SQLite database (:func:`build_sqlite`), and :func:`datapackage` describes every
derived file as a Frictionless Data Package (v2).

Nothing here knows about datamill's engine: functions take and return plain values (bytes,
DataFrames, JSON-able dicts), so pipeline steps can wrap them. A file that cannot be read
raises :class:`~datamill.errors.InvalidInput` whose message names the file, says what is wrong
and what to do; raw pandas / openpyxl exceptions never escape :func:`read_tables`.

Outputs are deterministic: the same input gives the same bytes (Parquet, SQLite, and PNG on
the same matplotlib and font installation), which keeps content-keyed caches honest.
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import re
import sqlite3
import tempfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from datamill.errors import InvalidInput

__all__ = [
    "DATAPACKAGE_PROFILE",
    "EXCEL_EXTENSIONS",
    "TEXT_EXTENSIONS",
    "build_sqlite",
    "datapackage",
    "plot",
    "preview",
    "read_tables",
    "safe_name",
    "sqlite_table_names",
    "summarize",
    "table_schema",
    "to_parquet",
]

#: Delimiter per text extension.
TEXT_EXTENSIONS: dict[str, str] = {".csv": ",", ".tsv": "\t"}
#: Workbook extensions read with openpyxl.
EXCEL_EXTENSIONS: frozenset[str] = frozenset({".xlsx", ".xlsm"})
#: The ``$schema`` of the descriptors :func:`datapackage` writes.
DATAPACKAGE_PROFILE = "https://datapackage.org/profiles/2.0/datapackage.json"

_SUPPORTED = ", ".join(sorted([*TEXT_EXTENSIONS, *EXCEL_EXTENSIONS]))
_MAX_HISTOGRAMS = 6
_TOP_VALUES = 5
_BAR_VALUES = 10
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # legacy .xls (and other Office 97) files
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})?)?")
_ISO_TZ = re.compile(r"(Z|[+-]\d{2}:?\d{2})$")
_PARSER_FIELDS = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


# --------------------------------------------------------------------------- reading


def read_tables(name: str, data: bytes) -> dict[str, pd.DataFrame]:
    """Read one uploaded file into tables, keyed by a file-name-safe table name.

    ``name`` is the file's name (a path is fine; only its last part counts) and picks the
    reader by extension: ``.csv`` (comma), ``.tsv`` (tab), ``.xlsx`` / ``.xlsm`` (openpyxl,
    one table per non-empty sheet). A CSV or TSV gives one table keyed by the file stem; a
    workbook gives ``"{stem}-{sheet}"`` per sheet. Keys pass through :func:`safe_name`.

    Text is decoded as UTF-8 (a BOM is dropped), UTF-16 when it starts with a UTF-16 BOM
    (Excel's "Unicode text" export), else Windows-1252, the usual encoding of non-UTF-8
    spreadsheet exports. Columns whose every value is an ISO 8601 date or timestamp become
    datetimes. Wholly empty rows and unnamed wholly empty columns (trailing delimiters, blank
    formatted cells) are dropped. Rows shorter than the header are padded with nulls, as
    pandas does; rows longer than the header are an error.

    Raises:
        InvalidInput: the file is empty, binary or undecodable, malformed (ragged rows), has
            no columns, is a corrupt or legacy (``.xls``) workbook, or has an unsupported
            extension. The message names the file; ``detail["file"]`` holds ``name``.
    """
    base = PurePosixPath(name.replace("\\", "/")).name or name
    suffix = PurePosixPath(base).suffix.lower()
    stem = PurePosixPath(base).stem if suffix else base
    if suffix == ".xls":
        raise _bad(
            name,
            "is a legacy Excel 97-2003 workbook (.xls), which is not supported. "
            "Open it in a spreadsheet program, save it as .xlsx and upload that.",
        )
    if suffix not in TEXT_EXTENSIONS and suffix not in EXCEL_EXTENSIONS:
        shown = f"'{suffix}'" if suffix else "no extension"
        raise _bad(
            name, f"has {shown}, which the tabular pipeline cannot read. Upload a file ending in one of {_SUPPORTED}."
        )
    if not data.strip():
        raise _bad(name, "is empty. Upload the file again with a header row and data.")
    if suffix in EXCEL_EXTENSIONS:
        return _read_workbook(name, stem, data)
    df = _read_delimited(name, data, TEXT_EXTENSIONS[suffix])
    return {safe_name(stem): df}


def safe_name(text: str, default: str = "table") -> str:
    """``text`` made safe as a file name: runs of characters outside ``[A-Za-z0-9.-]`` become
    one ``_``; leading and trailing dots and separators go (no hidden files); empty results
    become ``default``."""
    cleaned = re.sub(r"[^A-Za-z0-9.-]+", "_", text.strip()).strip("._-")
    return cleaned or default


def _bad(name: str, problem: str) -> InvalidInput:
    return InvalidInput(f"{name}: {problem}", file=name)


def _decode(name: str, data: bytes) -> str:
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise _bad(
                name,
                f"starts like UTF-16 text but is not valid UTF-16 ({exc.reason} at "
                f"byte {exc.start}). Save it as UTF-8 CSV and upload it again.",
            ) from exc
    if b"\x00" in data:
        # NUL never occurs in UTF-8 or Windows-1252 text; decoding would only produce garbage.
        raise _bad(
            name,
            "contains NUL bytes, so it is not a text table (is it a binary file "
            "renamed to .csv?). Export the data as UTF-8 CSV and upload that.",
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError as exc:
        raise _bad(
            name,
            f"is not valid UTF-8 or Windows-1252 text (byte 0x{data[exc.start]:02x} "
            f"at position {exc.start}). Save it with UTF-8 encoding and upload it again.",
        ) from exc


def _read_delimited(name: str, data: bytes, sep: str) -> pd.DataFrame:
    text = _decode(name, data)
    if not text.strip():
        raise _bad(name, "is empty. Upload the file again with a header row and data.")
    _check_first_row(name, text, sep)
    try:
        # index_col=False: pandas would otherwise silently turn the first column into the
        # index when data rows are one field longer than the header (checked above instead).
        # low_memory=False: one type per column instead of a per-chunk guess and a DtypeWarning.
        df = pd.read_csv(io.StringIO(text), sep=sep, index_col=False, low_memory=False)
    except pd.errors.EmptyDataError as exc:
        raise _bad(
            name,
            "has no columns: the first line should be a header naming them. "
            "Add a header row and upload the file again.",
        ) from exc
    except pd.errors.ParserError as exc:
        raise _bad(name, _describe_parser_error(str(exc), sep)) from exc
    except Exception as exc:  # anything else pandas raises is still the file's fault
        raise _bad(
            name,
            f"could not be parsed ({type(exc).__name__}: {exc}). Check that it is a well-formed delimited text file.",
        ) from exc
    df = _tidy(df)
    if df.shape[1] == 0:
        raise _bad(name, "has no columns. Add a header row naming the columns and upload it again.")
    return df


def _check_first_row(name: str, text: str, sep: str) -> None:
    """Reject a first data row longer than the header: pandas cannot report that case itself."""
    reader = csv.reader(io.StringIO(text), delimiter=sep)
    try:
        rows = (row for row in reader if row)  # pandas skips blank lines too
        header = next(rows, None)
        first = next(rows, None)
    except csv.Error:
        return  # let pandas report its own, more specific parse error
    if header is not None and first is not None and len(first) > len(header):
        raise _bad(
            name, f"the first data row has {len(first)} fields but the header has {len(header)}. {_fix_rows_hint(sep)}"
        )


def _describe_parser_error(message: str, sep: str) -> str:
    found = _PARSER_FIELDS.search(message)
    if found:
        expected, line, saw = found.groups()
        return f"line {line} has {saw} fields but the header has {expected}. {_fix_rows_hint(sep)}"
    return f"is not a well-formed table ({message.strip()}). {_fix_rows_hint(sep)}"


def _fix_rows_hint(sep: str) -> str:
    what = "tab" if sep == "\t" else f"'{sep}'"
    return (
        f"Make every row have as many fields as the header (quote values that contain a {what}) "
        "and upload the file again."
    )


def _read_workbook(name: str, stem: str, data: bytes) -> dict[str, pd.DataFrame]:
    if data.startswith(_OLE_MAGIC):
        raise _bad(
            name,
            "is a legacy Excel 97-2003 workbook (.xls) with an .xlsx name. "
            "Open it in a spreadsheet program, save it as .xlsx and upload that.",
        )
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise _bad(
            name,
            "is not a valid .xlsx workbook (an .xlsx file is a zip archive and this "
            "one is corrupt or truncated). Save the workbook again and re-upload it.",
        )
    try:
        sheets = pd.read_excel(io.BytesIO(data), sheet_name=None, engine="openpyxl")
    except Exception as exc:  # openpyxl raises many types (KeyError, BadZipFile, ...) on bad files
        raise _bad(
            name,
            f"is a corrupt .xlsx workbook ({type(exc).__name__}: {exc}). "
            "Open it in a spreadsheet program, save it again and re-upload it.",
        ) from exc
    tables: dict[str, pd.DataFrame] = {}
    used: set[str] = set()
    base = safe_name(stem)
    for sheet, raw in sheets.items():
        try:
            df = _tidy(raw)
        except Exception as exc:
            raise _bad(
                name, f"sheet {sheet!r} could not be read ({type(exc).__name__}: {exc}). Check the sheet's header row."
            ) from exc
        if df.shape[1] == 0:
            continue
        key = f"{base}-{safe_name(str(sheet), 'sheet')}"
        unique, n = key, 2
        while unique.lower() in used:  # case-insensitive file systems would clash too
            unique, n = f"{key}-{n}", n + 1
        used.add(unique.lower())
        tables[unique] = df
    if not tables:
        raise _bad(
            name,
            "has no columns: every sheet is empty. Put a header row and data in at "
            "least one sheet and upload it again.",
        )
    return tables


def _tidy(df: pd.DataFrame) -> pd.DataFrame:
    """Give a freshly read table string column names, one type per column and ISO dates."""
    df = df.copy()
    df.columns = [str(c).strip() for c in df.columns]
    # Spreadsheets and their CSV exports often carry empty cells right of and below the data
    # (trailing delimiters, formatted blank cells); such unnamed empty columns and empty rows
    # are layout, not data.
    blank = [c for c in df.columns if c.startswith("Unnamed:") and df[c].isna().all()]
    df = df.drop(columns=blank).dropna(how="all").reset_index(drop=True)
    for col in df.columns:
        df[col] = _normalize_column(df[col])
    return df


def _normalize_column(s: pd.Series) -> pd.Series:
    if not pd.api.types.is_object_dtype(s.dtype) and not pd.api.types.is_string_dtype(s.dtype):
        return s
    values = s.dropna()
    if len(values) == 0:
        return s
    kinds = {type(v) for v in values}
    if kinds == {bool}:
        return s.astype("boolean")
    if kinds == {str}:
        return _maybe_datetime(s, values)
    if pd.api.types.is_object_dtype(s.dtype) and len(kinds) > 1:
        # A column mixing numbers and text (common in spreadsheets) has no single type;
        # Parquet and SQLite need one, and text loses nothing.
        return s.map(lambda v: v if _is_missing(v) else str(v))
    return s


def _maybe_datetime(s: pd.Series, values: pd.Series) -> pd.Series:
    if not all(_ISO_DATE.fullmatch(v) for v in values):
        return s
    with_tz = [bool(_ISO_TZ.search(v)) for v in values if "T" in v or " " in v]
    if any(with_tz) and not all(with_tz):
        return s  # mixing zoned and naive timestamps has no faithful single type
    try:
        return pd.to_datetime(s, format="ISO8601", utc=any(with_tz))
    except (ValueError, OverflowError):
        return s


def _is_missing(v: Any) -> bool:
    return v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and math.isnan(v))


# --------------------------------------------------------------------------- summaries


def _field_type(s: pd.Series) -> str:
    """The Frictionless field type of a column: integer, number, boolean, date, datetime or string."""
    dtype = s.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return "boolean"
    if pd.api.types.is_integer_dtype(dtype):
        return "integer"
    if pd.api.types.is_float_dtype(dtype):
        values = s.dropna()
        # pandas stores an integer column with blanks as float; report what the file holds.
        if s.isna().any() and len(values) and np.isfinite(values).all() and (values % 1 == 0).all():
            return "integer"
        return "number"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        values = s.dropna()
        if len(values) and (values == values.dt.normalize()).all():
            return "date"
        return "datetime"
    if pd.api.types.is_object_dtype(dtype):
        values = s.dropna()
        if len(values) and all(isinstance(v, bool | np.bool_) for v in values):
            return "boolean"
    return "string"


def _json_number(v: Any) -> int | float | None:
    if v is None or _is_missing(v):
        return None
    if isinstance(v, int | np.integer):
        return int(v)
    f = float(v)
    return f if math.isfinite(f) else None


def _json_value(v: Any) -> Any:
    if _is_missing(v):
        return None
    if isinstance(v, bool | np.bool_):
        return bool(v)
    if isinstance(v, int | np.integer | float | np.floating):
        return _json_number(v)
    if isinstance(v, pd.Timestamp | datetime):
        return v.isoformat()
    return str(v)


def summarize(df: pd.DataFrame) -> dict[str, Any]:
    """A JSON-able column summary of ``df``.

    Returns ``{"rows": int, "columns": [...]}`` with, per column in order: ``name``,
    ``dtype`` (a Frictionless field type: ``integer``, ``number``, ``boolean``, ``date``,
    ``datetime`` or ``string``), ``non_null``, ``nulls``, ``unique`` (distinct non-null
    values); for ``integer`` / ``number`` also ``min``, ``max``, ``mean``, ``std`` (sample,
    ``None`` below two values); for ``date`` / ``datetime`` ``min`` and ``max`` as ISO 8601
    strings; for ``string`` / ``boolean`` ``top``: up to five ``{"value", "count"}``, most
    frequent first, ties by value. NaN and infinities never appear: they are ``None``.
    """
    columns: list[dict[str, Any]] = []
    for col in df.columns:
        s = df[col]
        kind = _field_type(s)
        values = s.dropna()
        info: dict[str, Any] = {
            "name": str(col),
            "dtype": kind,
            "non_null": len(values),
            "nulls": len(s) - len(values),
            "unique": int(values.nunique()),
        }
        if kind in ("integer", "number"):
            numbers = values.astype("float64")
            finite = numbers[np.isfinite(numbers)]
            if kind == "integer":
                # From the values themselves: float64 would round integers beyond 2**53.
                info["min"] = int(values.min()) if len(values) else None
                info["max"] = int(values.max()) if len(values) else None
            else:
                # An infinite extreme is reported as None, as JSON has no infinity.
                info["min"] = _json_number(numbers.min()) if len(numbers) else None
                info["max"] = _json_number(numbers.max()) if len(numbers) else None
            info["mean"] = _json_number(finite.mean()) if len(finite) else None
            info["std"] = _json_number(finite.std(ddof=1)) if len(finite) > 1 else None
        elif kind in ("date", "datetime"):
            info["min"] = _json_value(values.min()) if len(values) else None
            info["max"] = _json_value(values.max()) if len(values) else None
            if kind == "date" and info["min"] is not None:
                info["min"], info["max"] = info["min"][:10], info["max"][:10]
        else:
            info["top"] = _top_values(values, _TOP_VALUES)
        columns.append(info)
    return {"rows": len(df), "columns": columns}


def _top_values(values: pd.Series, limit: int) -> list[dict[str, Any]]:
    counts: dict[Any, int] = {}
    for v in values:
        key = _json_value(v)
        counts[key] = counts.get(key, 0) + 1
    # value_counts leaves the order of ties unspecified; sort explicitly for stable output.
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
    return [{"value": v, "count": n} for v, n in ranked[:limit]]


def table_schema(source: pd.DataFrame | Mapping[str, Any]) -> dict[str, Any]:
    """A Frictionless Table Schema (``{"fields": [{"name", "type"}, ...]}``) for a table.

    ``source`` is the DataFrame itself or its :func:`summarize` output, so a final step that
    only sees the summaries can still describe the tables.
    """
    if isinstance(source, pd.DataFrame):
        fields = [{"name": str(c), "type": _field_type(source[c])} for c in source.columns]
    else:
        try:
            fields = [{"name": str(c["name"]), "type": str(c["dtype"])} for c in source["columns"]]
        except (KeyError, TypeError) as exc:
            raise InvalidInput(
                "table_schema: expected a DataFrame or a summary with "
                "'columns' of {'name', 'dtype'}; pass the output of summarize()."
            ) from exc
    return {"fields": fields}


# --------------------------------------------------------------------------- derived files


def plot(df: pd.DataFrame, title: str) -> bytes:
    """A PNG overview of ``df``: histograms of up to six numeric columns in a grid of at most
    three across; without numeric columns, a bar chart of the ten most frequent values of the
    first column; without rows, a figure that says so.

    Drawn on a pyplot-free :class:`~matplotlib.figure.Figure` with the Agg canvas, so it is
    safe in threads and leaves no global figure behind; the PNG carries no software or date
    metadata, so identical input gives identical bytes.
    """
    numeric = [c for c in df.columns if _field_type(df[c]) in ("integer", "number")]
    numeric = [c for c in numeric if np.isfinite(df[c].astype("float64")).any()][:_MAX_HISTOGRAMS]
    if numeric:
        ncols = min(3, len(numeric))
        nrows = math.ceil(len(numeric) / ncols)
        fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows + 0.6), dpi=100, layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, col in zip(axes, numeric, strict=False):
            values = df[col].astype("float64")
            values = values[np.isfinite(values)].to_numpy()
            bins = max(5, min(30, math.ceil(math.sqrt(len(values)))))
            ax.hist(values, bins=bins, color="#4477aa", edgecolor="white", linewidth=0.5)
            ax.set_title(_label(str(col)), fontsize=10)
            ax.set_ylabel("count", fontsize=8)
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.tick_params(labelsize=8)
        for ax in axes[len(numeric) :]:
            ax.set_axis_off()
    elif len(df.columns) and df[df.columns[0]].notna().any():
        first = df.columns[0]
        top = _top_values(df[first].dropna(), _BAR_VALUES)
        fig = Figure(figsize=(7, 0.4 * len(top) + 1.6), dpi=100, layout="constrained")
        ax = fig.subplots()
        labels = [_label(_shorten(str(t["value"]))) for t in top][::-1]  # most frequent on top
        ax.barh(range(len(top)), [t["count"] for t in top][::-1], color="#4477aa")
        ax.set_yticks(range(len(top)), labels, fontsize=8)
        ax.set_xlabel("count", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(axis="x", labelsize=8)
        ax.set_title(f"most frequent values of {_label(str(first))}", fontsize=10)
    else:
        fig = Figure(figsize=(5, 2), dpi=100, layout="constrained")
        fig.text(0.5, 0.5, "no data to plot", ha="center", va="center", fontsize=12)
    fig.suptitle(_label(title), fontsize=12)
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _label(text: str) -> str:
    # Matplotlib reads text between dollar signs as mathtext; data may hold prices like "$5".
    return text.replace("$", r"\$")


def _shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def to_parquet(df: pd.DataFrame) -> bytes:
    """``df`` as Parquet bytes (pyarrow, snappy, no index column).

    Deterministic for a given pyarrow version; the pandas metadata is kept so that pandas
    reads the same dtypes back.
    """
    table = pa.Table.from_pandas(df, preserve_index=False)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="snappy")
    return bytes(sink.getvalue().to_pybytes())


def preview(df: pd.DataFrame, rows: int = 20) -> str:
    """The first ``rows`` rows of ``df`` as CSV text (header included, ``\\n`` line ends).

    Raises:
        InvalidInput: ``rows`` is negative.
    """
    if rows < 0:
        raise InvalidInput(f"preview: rows must be 0 or more, got {rows}. Pass a non-negative count.")
    return str(df.head(rows).to_csv(index=False, lineterminator="\n"))


def sqlite_table_names(keys: Iterable[str]) -> dict[str, str]:
    """The SQLite table name :func:`build_sqlite` uses for each table key, in order.

    Names are lowercase ``[a-z0-9_]``, start with a letter, avoid the reserved ``sqlite_``
    prefix and are unique (``_2``, ``_3`` ... on clashes, which SQLite judges case-blind).
    """
    names: dict[str, str] = {}
    used: set[str] = set()
    for key in keys:
        base = re.sub(r"[^a-z0-9_]+", "_", key.lower()).strip("_") or "table"
        if not base[0].isalpha() or base.startswith("sqlite_"):
            base = f"t_{base}"
        name, n = base, 2
        while name in used:
            name, n = f"{base}_{n}", n + 1
        used.add(name)
        names[key] = name
    return names


def build_sqlite(tables: Mapping[str, pd.DataFrame]) -> bytes:
    """One SQLite database holding every table, as the bytes of the database file.

    Table names come from :func:`sqlite_table_names`; datetimes are stored as ISO text,
    booleans as 0/1, nulls as NULL.

    Raises:
        InvalidInput: ``tables`` is empty, or a table has no columns or cannot be stored.
    """
    if not tables:
        raise InvalidInput(
            "build_sqlite: there are no tables to store (did every input file fail?). "
            "Fix the failed inputs and run again."
        )
    names = sqlite_table_names(tables)
    with tempfile.TemporaryDirectory(prefix="datamill-sqlite-") as tmp:
        path = Path(tmp) / "tables.sqlite"
        conn = sqlite3.connect(path)
        try:
            for key, df in tables.items():
                if df.shape[1] == 0:
                    raise InvalidInput(
                        f"build_sqlite: table {key!r} has no columns. Drop it or fix the file it came from.", table=key
                    )
                try:
                    df.to_sql(names[key], conn, index=False)
                except (sqlite3.Error, ValueError) as exc:
                    raise InvalidInput(
                        f"build_sqlite: table {key!r} could not be stored ({exc}). "
                        "Rename clashing columns (SQLite ignores case) and run again.",
                        table=key,
                    ) from exc
            conn.commit()
            # VACUUM packs the file, so its bytes depend on the content, not the insert history.
            conn.execute("VACUUM")
        finally:
            conn.close()
        return path.read_bytes()


# --------------------------------------------------------------------------- data package

_MEDIATYPES: dict[str, str] = {
    "csv": "text/csv",
    "tsv": "text/tab-separated-values",
    "json": "application/json",
    "png": "image/png",
    "parquet": "application/vnd.apache.parquet",
    "sqlite": "application/vnd.sqlite3",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "xlsm": "application/vnd.ms-excel.sheet.macroEnabled.12",
}
_TABULAR_FORMATS = frozenset({"csv", "tsv", "parquet"})
_FIELD_TYPES = frozenset(
    {
        "string",
        "number",
        "integer",
        "boolean",
        "object",
        "array",
        "list",
        "datetime",
        "date",
        "time",
        "year",
        "yearmonth",
        "duration",
        "geopoint",
        "geojson",
        "any",
    }
)
_HASH = re.compile(r"([a-z0-9-]+:)?[0-9a-fA-F]+")
_OPTIONAL_TEXT = ("title", "description")


def _package_name(text: str, default: str) -> str:
    cleaned = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("._-")
    return cleaned or default


def datapackage(
    resources: Sequence[Mapping[str, Any]],
    *,
    name: str = "datamill-derived",
    title: str | None = None,
    created: datetime | str | None = None,
) -> dict[str, Any]:
    """A Frictionless Data Package (v2) descriptor listing derived files.

    Each entry of ``resources`` describes one derived file::

        {
            "path": "weather/weather.parquet",   # required: relative POSIX path of the file
            "bytes": 12345,                      # required: size in bytes (int >= 0)
            "hash": "sha256:9f86d0...",          # required: "algorithm:hex" (bare hex means MD5)
            "derivedFrom": ["raw/weather.csv"],  # required: source path(s), a str or a list
            "name": "weather.parquet",           # optional: default is the path, normalized
            "format": "parquet",                 # optional: default is the path's extension
            "mediatype": "application/...",      # optional: default follows the format
            "schema": {"fields": [...]},         # required for csv/tsv/parquet, see table_schema()
            "title": "...", "description": "...",  # optional, copied as given
        }

    Resource names are lowercase ``[a-z0-9._-]`` and made unique (``-2`` ...). Tabular
    resources get ``"type": "table"`` and their schema. ``created`` defaults to now (UTC);
    pass it to get a reproducible descriptor.

    Raises:
        InvalidInput: no resources, or an entry lacks a field or has a malformed one; the
            message names the entry.
    """
    if not resources:
        raise InvalidInput(
            "datapackage: a data package needs at least one resource; pass the derived files to describe."
        )
    if created is None:
        created = datetime.now(UTC).replace(microsecond=0)
    if isinstance(created, datetime):
        created = created.isoformat().replace("+00:00", "Z")
    descriptor: dict[str, Any] = {
        "$schema": DATAPACKAGE_PROFILE,
        "name": _package_name(name, "datamill-derived"),
    }
    if title:
        descriptor["title"] = title
    descriptor["created"] = created
    out: list[dict[str, Any]] = []
    used: set[str] = set()
    for index, entry in enumerate(resources):
        resource = _resource(index, entry)
        base, n = resource["name"], 2
        while resource["name"] in used:
            resource["name"], n = f"{base}-{n}", n + 1
        used.add(resource["name"])
        out.append(resource)
    descriptor["resources"] = out
    return descriptor


def _resource(index: int, entry: Mapping[str, Any]) -> dict[str, Any]:
    where = f"datapackage: resource {index}"
    if not isinstance(entry, Mapping):
        raise InvalidInput(f"{where} is not a mapping; pass one dict per derived file.")
    path = entry.get("path")
    if not isinstance(path, str) or not path:
        raise InvalidInput(f"{where} has no 'path'; give the derived file's relative path.")
    where = f"datapackage: resource {index} ({path})"
    parts = PurePosixPath(path).parts
    if path.startswith("/") or "\\" in path or ".." in parts or "" in path.split("/"):
        raise InvalidInput(f"{where}: 'path' must be a relative POSIX path without '..'.")
    size = entry.get("bytes")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidInput(f"{where}: 'bytes' must be the file size as a non-negative integer.")
    digest = entry.get("hash")
    if not isinstance(digest, str) or not _HASH.fullmatch(digest):
        raise InvalidInput(f"{where}: 'hash' must be a hex digest, e.g. 'sha256:<hex>'.")
    sources = entry.get("derivedFrom")
    if isinstance(sources, str):
        sources = [sources]
    if not isinstance(sources, list | tuple) or not sources or not all(isinstance(s, str) and s for s in sources):
        raise InvalidInput(f"{where}: 'derivedFrom' must name the source file(s) it was made from.")
    suffix = PurePosixPath(path).suffix.lower().lstrip(".")
    fmt = str(entry.get("format") or suffix or "bin").lower()
    resource: dict[str, Any] = {
        "name": _package_name(str(entry.get("name") or path.replace("/", "-")), f"resource-{index}"),
        "path": path,
    }
    if fmt in _TABULAR_FORMATS:
        resource["type"] = "table"
    for key in _OPTIONAL_TEXT:
        if entry.get(key):
            resource[key] = str(entry[key])
    resource["format"] = fmt
    resource["mediatype"] = str(entry.get("mediatype") or _MEDIATYPES.get(fmt, "application/octet-stream"))
    if fmt in ("csv", "tsv", "json"):
        resource["encoding"] = "utf-8"
    resource["bytes"] = size
    resource["hash"] = digest
    resource["derivedFrom"] = list(sources)
    schema = entry.get("schema")
    if schema is not None or fmt in _TABULAR_FORMATS:
        resource["schema"] = _checked_schema(where, schema)
    return resource


def _checked_schema(where: str, schema: Any) -> dict[str, Any]:
    hint = "pass table_schema(df) or table_schema(summary)"
    if not isinstance(schema, Mapping) or not isinstance(schema.get("fields"), list | tuple):
        raise InvalidInput(f"{where}: a tabular resource needs 'schema' with 'fields'; {hint}.")
    fields: list[dict[str, Any]] = []
    for field in schema["fields"]:
        if (
            not isinstance(field, Mapping)
            or not isinstance(field.get("name"), str)
            or field.get("type", "any") not in _FIELD_TYPES
        ):
            raise InvalidInput(f"{where}: schema field {field!r} needs a 'name' and a Frictionless 'type'; {hint}.")
        fields.append({"name": field["name"], "type": field.get("type", "any")})
    return {**{k: v for k, v in schema.items() if k != "fields"}, "fields": fields}
