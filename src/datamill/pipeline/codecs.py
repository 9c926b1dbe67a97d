"""Codecs: how a step's return value becomes an output file, and how that file becomes a value again.

=========  ===============================  ==========  =====================================
codec      value                            extension   decoded as
=========  ===============================  ==========  =====================================
bytes      ``bytes``/``bytearray``          ``.bin``    ``bytes``
text       ``str``                          ``.txt``    ``str``
file       ``pathlib.Path`` the step wrote  its suffix  ``Path`` of the local file
parquet    ``pandas.DataFrame``             ``.parquet`` ``DataFrame``
png        ``matplotlib.figure.Figure``     ``.png``    ``Path`` of the PNG (a Figure cannot be rebuilt)
json       dict / list / number / bool      ``.json``   the same JSON data (tuples come back as lists)
=========  ===============================  ==========  =====================================

Encoding is deterministic — the same value gives the same bytes — because output digests feed
downstream task keys: a rerun that yields identical bytes leaves everything downstream cached.
JSON is written with sorted keys and a fixed layout; PNGs are rendered by Agg without the
"Software" text chunk; Parquet files depend only on the pyarrow version.

pandas and matplotlib are imported lazily: a value can only be a DataFrame or Figure if its
module is already loaded, so checking costs nothing for steps that never use them.

More codecs can be added with :func:`register`; they are tried before the built-ins.
"""

from __future__ import annotations

import json
import mimetypes
import shutil
import sys
from abc import ABC, abstractmethod
from pathlib import Path, PurePath
from typing import Any

from datamill.errors import InvalidPipeline

__all__ = [
    "Codec",
    "codec_for",
    "codec_names",
    "content_type_for",
    "ext_for",
    "file_ext",
    "get_codec",
    "is_builtin",
    "register",
    "unregister",
]


class Codec(ABC):
    """How one kind of value is stored. Subclass and :func:`register` to add one.

    ``name`` is recorded with each output (so the consumer knows how to decode it), ``ext`` is
    the file extension with its dot, ``content_type`` the MIME type.
    """

    name: str = ""
    ext: str = ".bin"
    content_type: str = "application/octet-stream"

    @abstractmethod
    def accepts(self, value: Any) -> bool:
        """Whether this codec stores ``value``."""

    def ext_for(self, value: Any) -> str:
        """The extension for ``value`` (the file codec keeps the file's own suffix)."""
        return self.ext

    def content_type_of(self, path: Path) -> str:
        """The content type of a file this codec wrote."""
        return self.content_type

    @abstractmethod
    def encode(self, value: Any, path: Path) -> None:
        """Write ``value`` to ``path``."""

    @abstractmethod
    def decode(self, path: Path) -> Any:
        """Read the value back from ``path``."""

    def to_bytes(self, value: Any) -> bytes | None:
        """``value``'s bytes, exactly as :meth:`encode` writes them, or None if this codec needs a file.

        A codec that answers here lets the engine keep a step's value in memory: no output file
        is written and read back. The default (custom codecs) is None: they write files.
        """
        return None

    def from_bytes(self, data: bytes) -> Any:
        """The value of ``data`` (the bytes of an encoded file); by default through a temporary file."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="datamill-codec-") as tmp:
            path = Path(tmp) / f"value{self.ext}"
            path.write_bytes(data)
            return self.decode(path)

    #: whether :meth:`to_bytes` and :meth:`from_bytes` work (values never need a file)
    in_memory = False

    def __repr__(self) -> str:
        return f"<Codec {self.name} {self.ext}>"


class BytesCodec(Codec):
    """Raw bytes, stored as they are."""

    name = "bytes"
    ext = ".bin"
    content_type = "application/octet-stream"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, (bytes, bytearray, memoryview))

    in_memory = True

    def encode(self, value: Any, path: Path) -> None:
        path.write_bytes(bytes(value))

    def decode(self, path: Path) -> bytes:
        return path.read_bytes()

    def to_bytes(self, value: Any) -> bytes:
        return bytes(value)

    def from_bytes(self, data: bytes) -> bytes:
        return bytes(data)


class TextCodec(Codec):
    """A string, stored as UTF-8 exactly as given (no newline translation)."""

    name = "text"
    ext = ".txt"
    content_type = "text/plain; charset=utf-8"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str)

    in_memory = True

    def encode(self, value: Any, path: Path) -> None:
        path.write_bytes(value.encode("utf-8"))

    def decode(self, path: Path) -> str:
        return path.read_bytes().decode("utf-8")

    def to_bytes(self, value: Any) -> bytes:
        return bytes(value.encode("utf-8"))

    def from_bytes(self, data: bytes) -> str:
        return data.decode("utf-8")


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays show up in summaries all the time; they have exact JSON forms.
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"a {type(value).__name__} is not JSON data")


class JsonCodec(Codec):
    """JSON data, written canonically: sorted keys, two-space indent, UTF-8, trailing newline."""

    name = "json"
    ext = ".json"
    content_type = "application/json"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, (dict, list, tuple, int, float, bool))

    in_memory = True

    def encode(self, value: Any, path: Path) -> None:
        path.write_bytes(self.to_bytes(value))

    def decode(self, path: Path) -> Any:
        return json.loads(path.read_bytes())

    def to_bytes(self, value: Any) -> bytes:
        try:
            text = json.dumps(
                value, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False, default=_json_default
            )
        except (TypeError, ValueError) as e:
            raise InvalidPipeline(
                f"the step returned a {type(value).__name__} that is not JSON data ({e}). Return plain "
                "dicts, lists, strings, finite numbers and None (NaN and infinity are not JSON: use None)."
            ) from e
        return (text + "\n").encode("utf-8")

    def from_bytes(self, data: bytes) -> Any:
        return json.loads(data)


class FileCodec(Codec):
    """A file the step wrote (a returned ``Path``, ``ctx.output`` files, command outputs): kept as-is."""

    name = "file"
    ext = ""
    content_type = "application/octet-stream"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, PurePath)

    def ext_for(self, value: Any) -> str:
        return file_ext(Path(value).name)

    def content_type_of(self, path: Path) -> str:
        return content_type_for(path.name)

    def encode(self, value: Any, path: Path) -> None:
        src = Path(value)
        if not src.is_file():
            raise InvalidPipeline(
                f"the step returned Path({str(src)!r}) but there is no file there; "
                "write the file before returning its path (directories are not outputs: return one file)"
            )
        if src.resolve() != path.resolve():
            shutil.copyfile(src, path)

    def decode(self, path: Path) -> Path:
        return path


class ParquetCodec(Codec):
    """A pandas DataFrame as Parquet (pyarrow; the index is kept so dtypes and index read back)."""

    name = "parquet"
    ext = ".parquet"
    content_type = "application/vnd.apache.parquet"

    def accepts(self, value: Any) -> bool:
        pd = sys.modules.get("pandas")
        return pd is not None and isinstance(value, pd.DataFrame)

    def encode(self, value: Any, path: Path) -> None:
        pd = sys.modules["pandas"]
        if not isinstance(value.columns, pd.MultiIndex) and not all(isinstance(c, str) for c in value.columns):
            # pyarrow would turn them into strings silently: the data would not read back as written.
            bad = [c for c in value.columns if not isinstance(c, str)][:3]
            raise InvalidPipeline(
                f"the step returned a DataFrame with non-string column names ({', '.join(map(repr, bad))}); "
                "Parquet needs string names: df.columns = df.columns.astype(str)"
            )
        try:
            value.to_parquet(path, engine="pyarrow", compression="snappy")
        except (ValueError, TypeError) as e:
            raise InvalidPipeline(
                f"the step returned a DataFrame that cannot be stored as Parquet: {e}. "
                "Make column names strings and give each column one type (df.astype(...))."
            ) from e

    def decode(self, path: Path) -> Any:
        import pandas as pd

        return pd.read_parquet(path, engine="pyarrow")


class PngCodec(Codec):
    """A matplotlib Figure rendered to PNG by Agg, without the "Software" chunk (so bytes are stable)."""

    name = "png"
    ext = ".png"
    content_type = "image/png"

    def accepts(self, value: Any) -> bool:
        mf = sys.modules.get("matplotlib.figure")
        return mf is not None and isinstance(value, mf.Figure)

    def encode(self, value: Any, path: Path) -> None:
        # backend="agg" renders with Agg whatever backend the figure was made with (macOS, Qt, ...).
        value.savefig(path, format="png", metadata={"Software": None}, backend="agg")
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is not None:
            # pyplot keeps every figure it made alive until closed; a long-lived worker would leak them.
            plt.close(value)

    def decode(self, path: Path) -> Path:
        return path


# Tried in order; registered codecs go in front. JSON comes last because bool/int are so broad.
_BUILTINS: list[Codec] = [BytesCodec(), TextCodec(), FileCodec(), ParquetCodec(), PngCodec(), JsonCodec()]
_ORDER: list[Codec] = list(_BUILTINS)
_BY_NAME: dict[str, Codec] = {c.name: c for c in _BUILTINS}


def register(codec: Codec, *, replace: bool = False) -> Codec:
    """Add ``codec``; it is tried before the built-ins (and before codecs registered earlier).

    Raises:
        InvalidPipeline: a codec of that name exists and ``replace`` is false.
    """
    if not codec.name:
        raise InvalidPipeline(f"codec {codec!r} has no name; set the class attribute 'name'")
    old = _BY_NAME.get(codec.name)
    if old is not None:
        if not replace:
            raise InvalidPipeline(f"a codec named '{codec.name}' exists; pass replace=True to replace it")
        _ORDER.remove(old)
    _ORDER.insert(0, codec)
    _BY_NAME[codec.name] = codec
    return codec


def unregister(name: str) -> None:
    """Remove a registered codec (built-ins come back if they were replaced)."""
    codec = _BY_NAME.pop(name, None)
    if codec is not None:
        _ORDER.remove(codec)
    for b in _BUILTINS:
        if b.name == name and b not in _ORDER:
            _BY_NAME[name] = b
            # Built-ins keep their relative order after any registered codecs.
            later = [c for c in _ORDER if c in _BUILTINS and _BUILTINS.index(c) > _BUILTINS.index(b)]
            _ORDER.insert(_ORDER.index(later[0]) if later else len(_ORDER), b)


def codec_names() -> list[str]:
    """Names of all codecs, in the order they are tried."""
    return [c.name for c in _ORDER]


def get_codec(name: str) -> Codec:
    """The codec called ``name``.

    Raises:
        InvalidPipeline: no such codec (e.g. a custom codec not registered in this process).
    """
    try:
        return _BY_NAME[name]
    except KeyError:
        raise InvalidPipeline(
            f"no codec named '{name}' (known: {', '.join(codec_names())}); "
            "register custom codecs in the module that defines the pipeline"
        ) from None


def is_builtin(name: str) -> bool:
    """Whether ``name`` is served by datamill's own codec (not one registered in its place)."""
    return any(_BY_NAME.get(name) is b for b in _BUILTINS)


def codec_for(value: Any) -> Codec:
    """The first codec that accepts ``value``.

    Raises:
        InvalidPipeline: nothing can store it; the message lists what a step may return.
    """
    for codec in _ORDER:
        if codec.accepts(value):
            return codec
    raise InvalidPipeline(
        f"a step returned a {type(value).__name__}, which datamill cannot store. Return bytes, str, "
        "JSON data (dict/list/number), a pathlib.Path of a file you wrote, a pandas DataFrame or a "
        "matplotlib Figure; or register a codec (datamill.pipeline.codecs.register)."
    )


def ext_for(value: Any) -> str:
    """The extension ``value`` would be stored with."""
    return codec_for(value).ext_for(value)


_DOUBLE_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tar.zst")


def file_ext(name: str) -> str:
    """A file name's extension, keeping well-known double ones: ``"a.tar.gz"`` → ``".tar.gz"``."""
    lower = name.lower()
    for s in _DOUBLE_SUFFIXES:
        if lower.endswith(s) and len(name) > len(s):
            return name[-len(s) :]
    return PurePath(name).suffix


_EXTRA_TYPES = {
    ".parquet": "application/vnd.apache.parquet",
    ".md": "text/markdown",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".tsv": "text/tab-separated-values",
    ".sqlite": "application/vnd.sqlite3",
    ".mmif": "application/json",
}


def content_type_for(name: str) -> str:
    """A content type guessed from a file name (``application/octet-stream`` when unknown)."""
    ext = PurePath(name).suffix.lower()
    if ext in _EXTRA_TYPES:
        return _EXTRA_TYPES[ext]
    guessed = mimetypes.guess_type(name, strict=False)[0]
    return guessed or "application/octet-stream"


#: Return annotations that say which codec a step's value uses, so the planner can name outputs early.
ANNOTATION_CODECS: dict[str, str] = {
    "bytes": "bytes",
    "bytearray": "bytes",
    "str": "text",
    "dict": "json",
    "list": "json",
    "int": "json",
    "float": "json",
    "bool": "json",
    "Dict": "json",
    "List": "json",
    "DataFrame": "parquet",
    "Figure": "png",
    "Path": "file",
}
