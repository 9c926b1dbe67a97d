"""Tests for the demo's tabular pipeline functions and sample data."""

from __future__ import annotations

import hashlib
import io
import json
import re
import sqlite3
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from datamill.demo import tabular
from datamill.errors import InvalidInput

SAMPLES = Path(tabular.__file__).parent / "samples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NAME_RE = re.compile(r"[a-z0-9._-]+")


def _sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def _xlsx(sheets: dict[str, pd.DataFrame]) -> bytes:
    buf = io.BytesIO()
    with pd.ExcelWriter(buf, engine="openpyxl") as writer:
        for sheet, df in sheets.items():
            df.to_excel(writer, sheet_name=sheet, index=False)
    return buf.getvalue()


def _raises(name: str, data: bytes, *phrases: str) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        tabular.read_tables(name, data)
    err = info.value
    assert name in err.message
    assert err.detail["file"] == name
    for phrase in phrases:
        assert phrase in err.message, err.message
    return err


# ---------------------------------------------------------------- samples


def test_samples_are_shipped_and_small() -> None:
    names = sorted(p.name for p in SAMPLES.iterdir())
    assert names == ["broken.csv", "field_survey.xlsx", "lab_measurements.tsv", "weather_stations.csv"]
    assert (SAMPLES / "field_survey.xlsx").stat().st_size < 50_000


def test_read_sample_csv() -> None:
    tables = tabular.read_tables("weather_stations.csv", _sample("weather_stations.csv"))
    assert list(tables) == ["weather_stations"]
    df = tables["weather_stations"]
    assert 50 <= len(df) <= 200
    assert pd.api.types.is_datetime64_any_dtype(df["observed_at"])
    assert df["temperature_c"].isna().any()  # the sample has gaps on purpose


def test_read_sample_tsv() -> None:
    df = tabular.read_tables("lab_measurements.tsv", _sample("lab_measurements.tsv"))["lab_measurements"]
    assert 50 <= len(df) <= 200
    assert df.shape[1] == 9
    assert pd.api.types.is_bool_dtype(df["passed_qc"])
    assert pd.api.types.is_datetime64_any_dtype(df["collected_on"])


def test_read_sample_workbook_one_table_per_sheet() -> None:
    tables = tabular.read_tables("field_survey.xlsx", _sample("field_survey.xlsx"))
    assert list(tables) == ["field_survey-Sites", "field_survey-Bird_counts"]
    assert tables["field_survey-Sites"].shape == (6, 6)
    counts = tables["field_survey-Bird_counts"]
    assert pd.api.types.is_integer_dtype(counts["count"])
    assert pd.api.types.is_datetime64_any_dtype(counts["survey_date"])


def test_broken_sample_fails_with_a_clear_message() -> None:
    _raises("broken.csv", _sample("broken.csv"), "line 4 has 5 fields but the header has 4", "quote")


# ---------------------------------------------------------------- read_tables: good input


def test_key_is_safe_stem_of_last_path_part() -> None:
    tables = tabular.read_tables("raw/2024 run/My Data (v2).CSV", b"a,b\n1,2\n")
    assert list(tables) == ["My_Data_v2"]


def test_text_encodings() -> None:
    expected = ["café", "naïve"]
    for data in (
        "name\ncafé\nnaïve\n".encode(),
        "name\ncafé\nnaïve\n".encode("utf-8-sig"),
        "name\ncafé\nnaïve\n".encode("cp1252"),
        "name\ncafé\nnaïve\n".encode("utf-16"),  # with BOM, as Excel's "Unicode text" export
    ):
        df = tabular.read_tables("words.csv", data)["words"]
        assert list(df.columns) == ["name"]
        assert df["name"].tolist() == expected


def test_header_only_is_an_empty_table() -> None:
    df = tabular.read_tables("h.csv", b"a,b\n")["h"]
    assert list(df.columns) == ["a", "b"]
    assert len(df) == 0


def test_short_rows_are_padded_and_blank_layout_dropped() -> None:
    df = tabular.read_tables("t.csv", b"a,b,c,\n1,2,3,\n4,5\n,,,\n")["t"]
    assert list(df.columns) == ["a", "b", "c"]
    assert len(df) == 2
    assert pd.isna(df.loc[1, "c"])


def test_types_are_normalized() -> None:
    data = (
        b"flag,day,stamp,zoned,mixed_tz,not_iso,n\n"
        b"true,2024-01-02,2024-01-02T03:04:05,2024-01-02T03:04:05Z,2024-01-02T03:04:05Z,01/02/2024,1\n"
        b",2024-01-03,2024-01-03 10:00,2024-01-03T10:00:00+00:00,2024-01-03T10:00:00,02/02/2024,\n"
        b"false,,,,,,3\n"
    )
    df = tabular.read_tables("t.csv", data)["t"]
    assert str(df["flag"].dtype) == "boolean"
    assert pd.api.types.is_datetime64_any_dtype(df["day"])
    assert pd.api.types.is_datetime64_any_dtype(df["stamp"])
    assert str(df["zoned"].dt.tz) == "UTC"
    assert not pd.api.types.is_datetime64_any_dtype(df["mixed_tz"])
    assert not pd.api.types.is_datetime64_any_dtype(df["not_iso"])
    kinds = {c["name"]: c["dtype"] for c in tabular.summarize(df)["columns"]}
    assert kinds == {
        "flag": "boolean",
        "day": "date",
        "stamp": "datetime",
        "zoned": "datetime",
        "mixed_tz": "string",
        "not_iso": "string",
        "n": "integer",
    }


def test_workbook_sheets_safe_unique_and_tidy() -> None:
    mixed = pd.DataFrame({"id": [1, 2, 3], "code": [10, "A7", None]})
    padded = pd.DataFrame({"x": [1.5, None, 2.5], "Unnamed: 1": [None, None, None]})
    data = _xlsx({"Q1 & 2024": mixed, "Q1 _ 2024": padded, "Empty": pd.DataFrame()})
    tables = tabular.read_tables("book.xlsx", data)
    assert list(tables) == ["book-Q1_2024", "book-Q1_2024-2"]
    first = tables["book-Q1_2024"]
    assert first["code"].tolist()[:2] == ["10", "A7"]  # mixed numbers and text become text
    assert pd.isna(first["code"].tolist()[2])
    assert tabular.to_parquet(first)  # a single type per column is what Parquet needs
    second = tables["book-Q1_2024-2"]
    assert list(second.columns) == ["x"]
    assert second["x"].tolist() == [1.5, 2.5]


def test_xlsm_extension_is_read() -> None:
    data = _xlsx({"S": pd.DataFrame({"a": [1]})})
    assert list(tabular.read_tables("m.xlsm", data)) == ["m-S"]


# ---------------------------------------------------------------- read_tables: errors


def test_error_unsupported_extension() -> None:
    _raises("data.json", b"{}", "'.json'", ".csv")
    _raises("README", b"a,b\n", "no extension")


def test_error_legacy_xls() -> None:
    _raises("old.xls", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 100, ".xls", "save it as .xlsx")
    _raises("renamed.xlsx", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 100, ".xls", "save it as .xlsx")


@pytest.mark.parametrize("data", [b"", b"  \n\n", b"\xef\xbb\xbf", b"\xef\xbb\xbf\n\n"])
def test_error_empty_file(data: bytes) -> None:
    _raises("empty.csv", data, "is empty")


def test_error_empty_workbook_file() -> None:
    _raises("empty.xlsx", b"", "is empty")


def test_error_no_columns() -> None:
    _raises("commas.csv", b",,\n,,\n", "no columns")
    _raises("blank.xlsx", _xlsx({"A": pd.DataFrame(), "B": pd.DataFrame()}), "no columns")


def test_error_undecodable_text() -> None:
    _raises("bad.csv", b"a,b\n\x81\x8d,\x90\n", "UTF-8", "0x81")


def test_error_binary_text() -> None:
    _raises("image.csv", PNG_MAGIC + b"\0\0\0\rIHDR", "NUL", "UTF-8")


def test_error_ragged_rows() -> None:
    _raises("later.csv", b"a,b\n1,2\n3,4\n5,6,7\n", "line 4 has 3 fields but the header has 2")
    _raises("later.tsv", b"a\tb\n1\t2\n5\t6\t7\n", "line 3 has 3 fields", "tab")


def test_error_first_row_longer_than_header() -> None:
    # pandas would otherwise make column "a" the index and shift every value silently.
    _raises("shifted.csv", b"a,b\n1,2,3\n4,5,6\n", "first data row has 3 fields but the header has 2")


def test_error_corrupt_xlsx() -> None:
    good = _sample("field_survey.xlsx")
    _raises("cut.xlsx", good[: len(good) // 2], "zip", "corrupt")
    _raises("text.xlsx", b"a,b\n1,2\n", "zip")
    other = io.BytesIO()
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("hello.txt", "not a workbook")
    _raises("other.xlsx", other.getvalue(), "corrupt .xlsx workbook")


def test_no_raw_parser_exception_escapes(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: Any, **kwargs: Any) -> pd.DataFrame:
        raise ValueError("something pandas-internal")

    monkeypatch.setattr(pd, "read_csv", explode)
    _raises("x.csv", b"a,b\n1,2\n", "could not be parsed", "something pandas-internal")


# ---------------------------------------------------------------- summarize


def _column(summary: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in summary["columns"] if c["name"] == name)


def test_summarize_numbers_strings_and_nulls() -> None:
    df = pd.DataFrame(
        {
            "i": [3, 1, 2, 2],
            "f": [1.5, np.nan, np.inf, -0.5],
            "gap_int": [1.0, None, 3.0, 4.0],
            "s": ["b", "a", "b", None],
            "one": [7.0, None, None, None],
        }
    )
    summary = tabular.summarize(df)
    json.dumps(summary, allow_nan=False)  # no NaN / inf anywhere
    assert summary["rows"] == 4
    assert [c["name"] for c in summary["columns"]] == ["i", "f", "gap_int", "s", "one"]
    i = _column(summary, "i")
    assert i == {
        "name": "i",
        "dtype": "integer",
        "non_null": 4,
        "nulls": 0,
        "unique": 3,
        "min": 1,
        "max": 3,
        "mean": 2.0,
        "std": pytest.approx(0.8164965809),
    }
    assert isinstance(i["min"], int)
    f = _column(summary, "f")
    assert f["dtype"] == "number"
    assert (f["non_null"], f["nulls"]) == (3, 1)
    assert f["min"] == -0.5 and f["max"] is None  # +inf is not JSON
    assert f["mean"] == 0.5
    assert _column(summary, "gap_int")["dtype"] == "integer"
    assert _column(summary, "gap_int")["max"] == 4
    s = _column(summary, "s")
    assert s["dtype"] == "string"
    assert s["top"] == [{"value": "b", "count": 2}, {"value": "a", "count": 1}]
    assert _column(summary, "one")["std"] is None


def test_summarize_top_values_limited_and_tie_ordered() -> None:
    df = pd.DataFrame({"s": list("gfedcbaa")})
    top = tabular.summarize(df)["columns"][0]["top"]
    assert [t["value"] for t in top] == ["a", "b", "c", "d", "e"]
    assert top[0]["count"] == 2


def test_summarize_dates_and_booleans() -> None:
    df = pd.DataFrame(
        {
            "d": pd.to_datetime(["2024-01-03", "2024-01-01", None]),
            "t": pd.to_datetime(["2024-01-01T10:30:00", "2024-01-02T00:00:00", None]),
            "b": [True, False, True],
        }
    )
    summary = tabular.summarize(df)
    json.dumps(summary, allow_nan=False)
    assert _column(summary, "d") == {
        "name": "d",
        "dtype": "date",
        "non_null": 2,
        "nulls": 1,
        "unique": 2,
        "min": "2024-01-01",
        "max": "2024-01-03",
    }
    assert _column(summary, "t")["min"] == "2024-01-01T10:30:00"
    b = _column(summary, "b")
    assert b["dtype"] == "boolean"
    assert b["top"] == [{"value": True, "count": 2}, {"value": False, "count": 1}]


def test_summarize_empty_and_deterministic() -> None:
    empty = tabular.summarize(pd.DataFrame({"a": pd.Series([], dtype="float64")}))
    assert empty == {
        "rows": 0,
        "columns": [
            {
                "name": "a",
                "dtype": "number",
                "non_null": 0,
                "nulls": 0,
                "unique": 0,
                "min": None,
                "max": None,
                "mean": None,
                "std": None,
            }
        ],
    }
    df = tabular.read_tables("w.csv", _sample("weather_stations.csv"))["w"]
    assert json.dumps(tabular.summarize(df)) == json.dumps(tabular.summarize(df.copy()))


def test_table_schema_from_frame_and_summary_agree() -> None:
    df = tabular.read_tables("lab.tsv", _sample("lab_measurements.tsv"))["lab"]
    schema = tabular.table_schema(df)
    assert schema == tabular.table_schema(tabular.summarize(df))
    types = {f["name"]: f["type"] for f in schema["fields"]}
    assert types["value"] == "number" and types["passed_qc"] == "boolean"
    assert types["collected_on"] == "date" and types["site"] == "string"
    with pytest.raises(InvalidInput):
        tabular.table_schema({"rows": 3})


# ---------------------------------------------------------------- plot


def test_plot_histograms_png_is_deterministic() -> None:
    df = tabular.read_tables("w.csv", _sample("weather_stations.csv"))["w"]
    png = tabular.plot(df, "weather stations")
    assert png.startswith(PNG_MAGIC)
    assert png == tabular.plot(df.copy(), "weather stations")
    assert b"Software" not in png and b"matplotlib" not in png.lower()


@pytest.mark.parametrize(
    "df",
    [
        pd.DataFrame({"name": ["x", "y", "x", "$5 deal", "a very long label " * 5]}),  # bar chart
        pd.DataFrame({f"c{i}": np.arange(20.0) * i for i in range(9)}),  # more than six numbers
        pd.DataFrame({"n": [np.nan, np.inf], "s": [None, None]}),  # nothing plottable
        pd.DataFrame({"a": pd.Series([], dtype="int64")}),
        pd.DataFrame(),
    ],
)
def test_plot_handles_any_table(df: pd.DataFrame) -> None:
    png = tabular.plot(df, "cost in $ (USD)")
    assert png.startswith(PNG_MAGIC)
    assert png == tabular.plot(df, "cost in $ (USD)")


# ---------------------------------------------------------------- parquet, preview


def test_parquet_round_trips_and_is_deterministic() -> None:
    for name in ("weather_stations.csv", "lab_measurements.tsv", "field_survey.xlsx"):
        for df in tabular.read_tables(name, _sample(name)).values():
            data = tabular.to_parquet(df)
            assert data[:4] == b"PAR1"
            assert data == tabular.to_parquet(df.copy())
            back = pd.read_parquet(io.BytesIO(data))
            pd.testing.assert_frame_equal(back, df)


def test_preview() -> None:
    df = tabular.read_tables("w.csv", _sample("weather_stations.csv"))["w"]
    text = tabular.preview(df)
    lines = text.splitlines()
    assert lines[0] == ",".join(df.columns)
    assert len(lines) == 21
    assert "\r" not in text
    assert len(tabular.preview(df, rows=3).splitlines()) == 4
    assert tabular.preview(df, rows=0).splitlines() == [lines[0]]
    with pytest.raises(InvalidInput, match="rows"):
        tabular.preview(df, rows=-1)


# ---------------------------------------------------------------- sqlite


def _all_sample_tables() -> dict[str, pd.DataFrame]:
    tables: dict[str, pd.DataFrame] = {}
    for name in ("weather_stations.csv", "lab_measurements.tsv", "field_survey.xlsx"):
        tables.update(tabular.read_tables(name, _sample(name)))
    return tables


def _open_sqlite(data: bytes, tmp_path: Path) -> sqlite3.Connection:
    path = tmp_path / "db.sqlite"
    path.write_bytes(data)
    return sqlite3.connect(path)


def test_build_sqlite_tables_and_rows(tmp_path: Path) -> None:
    tables = _all_sample_tables()
    data = tabular.build_sqlite(tables)
    assert data.startswith(b"SQLite format 3\0")
    assert data == tabular.build_sqlite(tables)
    names = tabular.sqlite_table_names(tables)
    assert names == {
        "weather_stations": "weather_stations",
        "lab_measurements": "lab_measurements",
        "field_survey-Sites": "field_survey_sites",
        "field_survey-Bird_counts": "field_survey_bird_counts",
    }
    conn = _open_sqlite(data, tmp_path)
    try:
        found = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert found == set(names.values())
        for key, df in tables.items():
            (count,) = conn.execute(f'SELECT count(*) FROM "{names[key]}"').fetchone()
            assert count == len(df)
            columns = [r[1] for r in conn.execute(f'PRAGMA table_info("{names[key]}")')]
            assert columns == list(df.columns)
        (nulls,) = conn.execute("SELECT count(*) FROM weather_stations WHERE temperature_c IS NULL").fetchone()
        assert nulls == int(tables["weather_stations"]["temperature_c"].isna().sum())
    finally:
        conn.close()


def test_sqlite_table_names_are_safe_and_unique() -> None:
    names = tabular.sqlite_table_names(["Sales 2024", "sales-2024", "2024", "sqlite_stat", "---"])
    assert names == {
        "Sales 2024": "sales_2024",
        "sales-2024": "sales_2024_2",
        "2024": "t_2024",
        "sqlite_stat": "t_sqlite_stat",
        "---": "table",
    }


def test_build_sqlite_errors() -> None:
    with pytest.raises(InvalidInput, match="no tables"):
        tabular.build_sqlite({})
    with pytest.raises(InvalidInput, match="no columns"):
        tabular.build_sqlite({"x": pd.DataFrame()})
    clash = pd.DataFrame([[1, 2]], columns=["A", "a"])
    with pytest.raises(InvalidInput, match="'clash'"):
        tabular.build_sqlite({"clash": clash})


# ---------------------------------------------------------------- datapackage


def _resource(path: str, data: bytes, source: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "path": path,
        "bytes": len(data),
        "hash": "sha256:" + hashlib.sha256(data).hexdigest(),
        "derivedFrom": [source],
    }
    if schema is not None:
        entry["schema"] = schema
    return entry


def test_datapackage_for_the_whole_sample_set() -> None:
    """The demo end to end: every good sample through every function, then one descriptor."""
    resources: list[dict[str, Any]] = []
    tables: dict[str, pd.DataFrame] = {}
    failed: dict[str, str] = {}
    for path in sorted(SAMPLES.iterdir()):
        source = f"samples/{path.name}"
        try:
            read = tabular.read_tables(path.name, path.read_bytes())
        except InvalidInput as exc:
            failed[path.name] = exc.message
            continue
        for key, df in read.items():
            tables[key] = df
            schema = tabular.table_schema(df)
            outputs: list[tuple[str, bytes, dict[str, Any] | None]] = [
                (f"{key}/summary.json", json.dumps(tabular.summarize(df)).encode(), None),
                (f"{key}/plot.png", tabular.plot(df, key), None),
                (f"{key}/{key}.parquet", tabular.to_parquet(df), schema),
                (f"{key}/preview.csv", tabular.preview(df).encode(), schema),
            ]
            resources += [_resource(p, data, source, s) for p, data, s in outputs]
    assert list(failed) == ["broken.csv"]
    db = tabular.build_sqlite(tables)
    sqlite_entry = _resource("all.sqlite", db, "")
    sqlite_entry["derivedFrom"] = [f"samples/{p.name}" for p in sorted(SAMPLES.iterdir()) if p.name != "broken.csv"]
    resources.append(sqlite_entry)

    created = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
    package = tabular.datapackage(resources, name="Demo Tabular", title="Demo", created=created)
    assert package == tabular.datapackage(resources, name="Demo Tabular", title="Demo", created=created)
    json.dumps(package, allow_nan=False)
    assert package["$schema"] == "https://datapackage.org/profiles/2.0/datapackage.json"
    assert package["name"] == "demo-tabular"
    assert package["created"] == "2024-06-01T12:00:00Z"
    assert len(package["resources"]) == 4 * 4 + 1
    names = [r["name"] for r in package["resources"]]
    assert len(set(names)) == len(names)
    for res, entry in zip(package["resources"], resources, strict=True):
        assert NAME_RE.fullmatch(res["name"]), res["name"]
        assert {"name", "path", "format", "mediatype", "bytes", "hash", "derivedFrom"} <= set(res)
        assert (res["path"], res["bytes"], res["hash"]) == (entry["path"], entry["bytes"], entry["hash"])
        assert res["derivedFrom"] and all(isinstance(s, str) for s in res["derivedFrom"])
        if res["format"] in ("parquet", "csv"):
            assert res["type"] == "table"
            assert all(set(f) == {"name", "type"} for f in res["schema"]["fields"])
        else:
            assert "schema" not in res
    by_format = {r["format"]: r["mediatype"] for r in package["resources"]}
    assert by_format == {
        "json": "application/json",
        "png": "image/png",
        "parquet": "application/vnd.apache.parquet",
        "csv": "text/csv",
        "sqlite": "application/vnd.sqlite3",
    }
    assert package["resources"][-1]["derivedFrom"] == [
        "samples/field_survey.xlsx",
        "samples/lab_measurements.tsv",
        "samples/weather_stations.csv",
    ]


def test_datapackage_names_defaults_and_overrides() -> None:
    a = _resource("Out/Summary.JSON", b"{}", "in.csv")
    b = _resource("out-summary.json", b"{}", "in.csv")
    c = {
        **_resource("x.bin", b"x", "in.csv"),
        "name": "Custom Name!",
        "format": "Weird",
        "mediatype": "application/x-weird",
        "description": "made by hand",
        "derivedFrom": "in.csv",
    }
    package = tabular.datapackage([a, b, c])
    assert [r["name"] for r in package["resources"]] == ["out-summary.json", "out-summary.json-2", "custom-name"]
    assert package["resources"][0]["format"] == "json"
    weird = package["resources"][2]
    assert (weird["format"], weird["mediatype"]) == ("weird", "application/x-weird")
    assert weird["description"] == "made by hand"
    assert weird["derivedFrom"] == ["in.csv"]
    created = datetime.fromisoformat(package["created"].replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - created).total_seconds()) < 60
    assert tabular.datapackage([a], created="2020-01-01")["created"] == "2020-01-01"


@pytest.mark.parametrize(
    ("change", "phrase"),
    [
        (lambda r: r.pop("path"), "'path'"),
        (lambda r: r.update(path="/abs/x.json"), "relative"),
        (lambda r: r.update(path="a/../x.json"), "relative"),
        (lambda r: r.update(bytes=-1), "'bytes'"),
        (lambda r: r.update(bytes=True), "'bytes'"),
        (lambda r: r.pop("hash"), "'hash'"),
        (lambda r: r.update(hash="sha256:not hex"), "'hash'"),
        (lambda r: r.update(derivedFrom=[]), "'derivedFrom'"),
        (lambda r: r.pop("derivedFrom"), "'derivedFrom'"),
        (lambda r: r.update(path="t.parquet"), "'schema'"),
        (lambda r: r.update(schema={"fields": [{"name": "a", "type": "float"}]}), "Frictionless"),
    ],
)
def test_datapackage_rejects_bad_entries(change: Callable[[dict[str, Any]], Any], phrase: str) -> None:
    entry = _resource("out/x.json", b"{}", "in.csv")
    change(entry)
    with pytest.raises(InvalidInput) as info:
        tabular.datapackage([_resource("ok.json", b"{}", "in.csv"), entry])
    assert "resource 1" in info.value.message
    assert phrase in info.value.message


def test_datapackage_needs_resources() -> None:
    with pytest.raises(InvalidInput, match="at least one resource"):
        tabular.datapackage([])
