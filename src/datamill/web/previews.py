"""Previews of an item version by type, reading only the first bytes or rows.

* images (``image/*``): shown inline from the API's download URL (nothing read here);
* CSV/TSV: the first :data:`ROWS` rows of the first :data:`HEAD_BYTES`, with a type per column
  (integer, number, boolean, date, text) inferred from those rows;
* Parquet (pyarrow), Excel (openpyxl): the first rows with the file's own column types. Both come
  with the ``demo`` extra and are imported only here; without them the preview is a hex summary
  with a note saying what to install;
* JSON: parsed and shown as a foldable tree (up to :data:`JSON_BYTES`);
* SQLite: each table's first rows, read from a temporary copy opened read-only;
* text and logs: the first :data:`TEXT_BYTES`, decoded as UTF-8;
* anything else: the size and a hex dump of the first bytes.

Formats that need the whole file (Parquet, Excel, SQLite) are previewed only up to
:data:`WHOLE_FILE_BYTES`. A file that cannot be parsed falls back to text or hex with a note,
never an error page.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datamill.service import Service
from datamill.store.records import VersionInfo

ROWS = 50
HEAD_BYTES = 256 * 1024
TEXT_BYTES = 64 * 1024
JSON_BYTES = 1024 * 1024
HEX_BYTES = 512
WHOLE_FILE_BYTES = 32 * 1024 * 1024
SQLITE_TABLES = 10
MAX_COLUMNS = 50

IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp", "image/svg+xml", "image/bmp")
SQLITE_MAGIC = b"SQLite format 3\x00"


@dataclass
class Table:
    """A table preview: a title, ``(name, type)`` columns and the first rows as text."""

    title: str
    columns: list[tuple[str, str]]
    rows: list[list[str]]
    more: bool = False


@dataclass
class Preview:
    """What the item page shows: ``kind`` picks the template part, the rest is its content."""

    kind: str
    note: str = ""
    tables: list[Table] = field(default_factory=list)
    text: str = ""
    value: Any = None
    hex_lines: list[str] = field(default_factory=list)
    size: int = 0


def _head(service: Service, info: VersionInfo, limit: int) -> bytes:
    """The first ``limit`` bytes of a version (closing the reader early)."""
    if info.size == 0:
        return b""
    _, chunks = service.store.iter_bytes(service.actor, info.path, info.version, 0, max(0, min(info.size, limit) - 1))
    out = bytearray()
    try:
        for chunk in chunks:
            out += chunk
            if len(out) >= limit:
                break
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return bytes(out[:limit])


def _suffix(name: str) -> str:
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def kind_of(info: VersionInfo, head: bytes) -> str:
    """Which preview a version gets, by its type, its name and its first bytes."""
    ctype, ext = info.content_type.split(";")[0].strip().lower(), _suffix(info.name)
    if ctype in IMAGE_TYPES:
        return "image"
    if ext == "parquet" or head[:4] == b"PAR1":
        return "parquet"
    if ext in ("xlsx", "xlsm") or ctype.endswith("spreadsheetml.sheet"):
        return "excel"
    if head.startswith(SQLITE_MAGIC):
        return "sqlite"
    if ext in ("csv", "tsv", "tab") or ctype in ("text/csv", "text/tab-separated-values"):
        return "csv"
    if ext == "json" or ctype == "application/json" or ctype.endswith("+json"):
        return "json"
    if ctype.startswith("text/") or _is_text(head):
        return "text"
    return "hex"


def _is_text(head: bytes) -> bool:
    if not head or b"\x00" in head[:4096]:
        return False
    try:
        head[:4096].decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= 4092  # cut in the middle of a character
    return True


def preview(service: Service, info: VersionInfo) -> Preview:
    """The preview of one item version (blocking: reads the store)."""
    head = _head(service, info, HEAD_BYTES)
    kind = kind_of(info, head)
    try:
        if kind == "image":
            return Preview("image", size=info.size)
        if kind == "csv":
            return _csv(info, head)
        if kind == "json":
            return _json(service, info, head)
        if kind in ("parquet", "excel", "sqlite"):
            return _whole_file(service, info, head, kind)
    except _Fallback as fb:
        return _text_or_hex(info, head, fb.note)
    return _text_or_hex(info, head, "")


class _Fallback(Exception):
    def __init__(self, note: str) -> None:
        super().__init__(note)
        self.note = note


def _text_or_hex(info: VersionInfo, head: bytes, note: str) -> Preview:
    if _is_text(head):
        text = head[:TEXT_BYTES].decode("utf-8", errors="replace")
        if info.size > TEXT_BYTES:
            note = (note + " " if note else "") + f"Showing the first {TEXT_BYTES // 1024} KB of {info.size:,} bytes."
        return Preview("text", note=note, text=text, size=info.size)
    return Preview("hex", note=note, hex_lines=hex_dump(head[:HEX_BYTES]), size=info.size)


def hex_dump(data: bytes) -> list[str]:
    """``00000000  89 50 4e 47 ...  |.PNG....|`` lines, 16 bytes each."""
    lines = []
    for at in range(0, len(data), 16):
        chunk = data[at : at + 16]
        hexes = " ".join(f"{b:02x}" for b in chunk)
        shown = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{at:08x}  {hexes:<47}  |{shown}|")
    return lines


# ------------------------------------------------------------------------------------- CSV

_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([+-]\d{2}:?\d{2}|Z)?)?$")
_BOOL = {"true", "false", "yes", "no"}


def column_type(values: list[str]) -> str:
    """The narrowest of integer, number, boolean, date, text that every non-empty value fits."""
    present = [v.strip() for v in values if v.strip()]
    if not present:
        return "empty"
    for name, test in (
        ("integer", _INT.match),
        ("number", _FLOAT.match),
        ("boolean", lambda v: v.lower() in _BOOL),
        ("date", _DATE.match),
    ):
        if all(test(v) for v in present):
            return name
    return "text"


def _csv(info: VersionInfo, head: bytes) -> Preview:
    text = head.decode("utf-8-sig", errors="replace")
    if info.size > len(head):
        text = text[: text.rfind("\n") + 1] or text  # drop the cut last line
    delimiter = "\t" if _suffix(info.name) in ("tsv", "tab") or "tab-separated" in info.content_type else ","
    if delimiter == ",":
        try:
            delimiter = csv.Sniffer().sniff(text[:8192], delimiters=",;\t|").delimiter
        except csv.Error:
            delimiter = ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        header = next(reader, [])
        rows = [row for _, row in zip(range(ROWS + 1), reader, strict=False)]
    except csv.Error as exc:
        raise _Fallback(f"Could not read this as a table ({exc}); showing it as text.") from None
    if not header:
        raise _Fallback("The file is empty.")
    more = len(rows) > ROWS or info.size > len(head)
    rows = rows[:ROWS]
    width = min(len(header), MAX_COLUMNS)
    columns = [(header[i], column_type([r[i] if i < len(r) else "" for r in rows])) for i in range(width)]
    cells = [[(r[i] if i < len(r) else "") for i in range(width)] for r in rows]
    note = f"The first {len(rows)} rows." if more else ""
    return Preview("table", note=note, tables=[Table(info.name, columns, cells, more)], size=info.size)


# ------------------------------------------------------------------------------------- JSON


def _json(service: Service, info: VersionInfo, head: bytes) -> Preview:
    data = head if info.size <= len(head) else _head(service, info, JSON_BYTES)
    if info.size > JSON_BYTES:
        raise _Fallback(f"The JSON is larger than {JSON_BYTES // 1024 // 1024} MB; showing its beginning as text.")
    try:
        value = json.loads(data.decode("utf-8-sig"))
    except (ValueError, RecursionError) as exc:
        raise _Fallback(f"This is not valid JSON ({exc}); showing it as text.") from None
    return Preview("json", value=value, text=json.dumps(value, indent=2, ensure_ascii=False), size=info.size)


# ------------------------------------------------------------------ formats read whole (from a copy)


def _whole_file(service: Service, info: VersionInfo, head: bytes, kind: str) -> Preview:
    if info.size > WHOLE_FILE_BYTES:
        raise _Fallback(f"Files over {WHOLE_FILE_BYTES // 1024 // 1024} MB are not previewed as tables.")
    tmp = Path(tempfile.mkdtemp(prefix="datamill-preview-"))
    try:
        path = tmp / {"parquet": "file.parquet", "excel": "file.xlsx", "sqlite": "file.sqlite"}[kind]
        with path.open("wb") as out:
            for chunk in _chunks(service, info):
                out.write(chunk)
        readers = {"parquet": _parquet, "excel": _excel, "sqlite": _sqlite}
        return readers[kind](path, info)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _chunks(service: Service, info: VersionInfo) -> Iterator[bytes]:
    _, chunks = service.iter_bytes(info.path, info.version)
    yield from chunks


def _parquet(path: Path, info: VersionInfo) -> Preview:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise _Fallback("Parquet previews need pyarrow: pip install 'datamill[demo]'.") from None
    try:
        pf = pq.ParquetFile(path)
        batch = next(pf.iter_batches(batch_size=ROWS), None)
    except Exception as exc:  # pyarrow raises many kinds for a damaged file
        raise _Fallback(f"Could not read this Parquet file ({type(exc).__name__}).") from None
    schema = pf.schema_arrow
    columns = [(f.name, str(f.type)) for f in list(schema)[:MAX_COLUMNS]]
    rows: list[list[str]] = []
    if batch is not None:
        data = batch.to_pylist()
        rows = [[_cell(r.get(name)) for name, _ in columns] for r in data]
    total = pf.metadata.num_rows
    note = f"The first {len(rows)} of {total:,} rows." if total > len(rows) else ""
    return Preview("table", note=note, tables=[Table(info.name, columns, rows, total > len(rows))], size=info.size)


def _cell(value: Any) -> str:
    return "" if value is None else str(value)[:200]


def _excel(path: Path, info: VersionInfo) -> Preview:
    try:
        import openpyxl
    except ImportError:
        raise _Fallback("Excel previews need openpyxl: pip install 'datamill[demo]'.") from None
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # a damaged workbook: zip, XML and openpyxl errors
        raise _Fallback(f"Could not read this workbook ({type(exc).__name__}).") from None
    tables = []
    try:
        for sheet in book.worksheets[:SQLITE_TABLES]:
            it = sheet.iter_rows(values_only=True)
            header = [_cell(v) for v in next(it, ())][:MAX_COLUMNS]
            raw = [list(r)[: len(header)] for _, r in zip(range(ROWS + 1), it, strict=False)]
            more = len(raw) > ROWS
            raw = raw[:ROWS]
            columns = [(h, _py_type([r[i] if i < len(r) else None for r in raw])) for i, h in enumerate(header)]
            tables.append(Table(sheet.title, columns, [[_cell(v) for v in r] for r in raw], more))
    finally:
        book.close()
    return Preview("table", tables=tables, size=info.size)


def _py_type(values: list[Any]) -> str:
    kinds = {type(v).__name__ for v in values if v is not None}
    names = {"int": "integer", "float": "number", "bool": "boolean", "datetime": "date", "str": "text"}
    if not kinds:
        return "empty"
    if kinds <= {"int", "float"}:
        return "number" if "float" in kinds else "integer"
    return names.get(kinds.pop(), "text") if len(kinds) == 1 else "mixed"


def _sqlite(path: Path, info: VersionInfo) -> Preview:
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise _Fallback(f"Could not open this SQLite database ({exc}).") from None
    tables = []
    try:
        names = [
            r[0]
            for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name").fetchall()
            if not r[0].startswith("sqlite_")
        ]
        for name in names[:SQLITE_TABLES]:
            quoted = '"' + name.replace('"', '""') + '"'
            cols = conn.execute(f"PRAGMA table_info({quoted})").fetchall()
            columns = [(c[1], c[2] or "any") for c in cols][:MAX_COLUMNS]
            cur = conn.execute(f"SELECT * FROM {quoted} LIMIT {ROWS + 1}")
            raw = cur.fetchall()
            more = len(raw) > ROWS
            rows = [[_cell(v) for v in r[: len(columns)]] for r in raw[:ROWS]]
            tables.append(Table(name, columns, rows, more))
    except sqlite3.Error as exc:
        raise _Fallback(f"Could not read this SQLite database ({exc}).") from None
    finally:
        conn.close()
    note = f"{len(names)} tables; showing the first {SQLITE_TABLES}." if len(names) > SQLITE_TABLES else ""
    return Preview("table", note=note, tables=tables, size=info.size)
