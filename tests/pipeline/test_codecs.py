"""Codecs: round trips, deterministic bytes, the registry, errors, lazy imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from datamill.errors import InvalidPipeline
from datamill.pipeline import codecs


def roundtrip(value: Any, tmp_path: Path, name: str = "out") -> tuple[codecs.Codec, Path, Any]:
    codec = codecs.codec_for(value)
    path = tmp_path / (name + codec.ext_for(value))
    codec.encode(value, path)
    return codec, path, codec.decode(path)


@pytest.mark.parametrize(
    ("value", "codec_name", "ext", "decoded"),
    [
        (b"\x00\x01", "bytes", ".bin", b"\x00\x01"),
        (bytearray(b"ab"), "bytes", ".bin", b"ab"),
        ("héllo\r\nworld", "text", ".txt", "héllo\r\nworld"),
        ({"b": [1, 2.5, None], "a": {"x": True}}, "json", ".json", {"a": {"x": True}, "b": [1, 2.5, None]}),
        ([1, "two"], "json", ".json", [1, "two"]),
        ((1, 2), "json", ".json", [1, 2]),
        (42, "json", ".json", 42),
        (False, "json", ".json", False),
    ],
)
def test_plain_values_round_trip(value: Any, codec_name: str, ext: str, decoded: Any, tmp_path: Path) -> None:
    codec, path, back = roundtrip(value, tmp_path)
    assert (codec.name, path.suffix) == (codec_name, ext)
    assert back == decoded


def test_json_is_canonical(tmp_path: Path) -> None:
    a = tmp_path / "a.json"
    b = tmp_path / "b.json"
    codecs.get_codec("json").encode({"b": 1, "a": {"d": 2, "c": "é"}}, a)
    codecs.get_codec("json").encode({"a": {"c": "é", "d": 2}, "b": 1}, b)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_text(encoding="utf-8") == '{\n  "a": {\n    "c": "é",\n    "d": 2\n  },\n  "b": 1\n}\n'


def test_json_refuses_nan_with_advice(tmp_path: Path) -> None:
    with pytest.raises(InvalidPipeline, match="NaN and infinity are not JSON: use None"):
        codecs.get_codec("json").encode({"mean": float("nan")}, tmp_path / "x.json")
    with pytest.raises(InvalidPipeline, match="a dict that is not JSON data"):
        codecs.get_codec("json").encode({"s": {1, 2}}, tmp_path / "x.json")


def test_json_accepts_numpy_scalars(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    _, _, back = roundtrip({"n": np.int64(3), "f": np.float32(0.5), "a": np.arange(2)}, tmp_path)
    assert back == {"n": 3, "f": 0.5, "a": [0, 1]}


def test_path_is_stored_as_is(tmp_path: Path) -> None:
    src = tmp_path / "report.tar.gz"
    src.write_bytes(b"zz")
    codec = codecs.codec_for(src)
    assert (codec.name, codec.ext_for(src)) == ("file", ".tar.gz")
    dest = tmp_path / "out" / "return.tar.gz"
    dest.parent.mkdir()
    codec.encode(src, dest)
    assert dest.read_bytes() == b"zz"
    assert codec.decode(dest) == dest
    assert codec.content_type_of(tmp_path / "x.csv") == "text/csv"
    with pytest.raises(InvalidPipeline, match="but there is no file there"):
        codec.encode(tmp_path / "missing.csv", tmp_path / "y.csv")


def test_dataframe_round_trip_is_deterministic(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"x": [1, 2, 3], "name": ["a", "b", None], "t": pd.to_datetime(["2024-01-01"] * 3)})
    codec, path, back = roundtrip(df, tmp_path)
    assert (codec.name, path.suffix, codec.content_type) == ("parquet", ".parquet", "application/vnd.apache.parquet")
    pd.testing.assert_frame_equal(back, df)
    again = tmp_path / "again.parquet"
    codec.encode(df, again)
    assert again.read_bytes() == path.read_bytes()
    indexed = df.set_index("name")
    _, _, back_indexed = roundtrip(indexed, tmp_path, "indexed")
    pd.testing.assert_frame_equal(back_indexed, indexed)


def test_dataframe_with_bad_columns_says_what_to_do(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    with pytest.raises(InvalidPipeline, match=r"non-string column names \(1\); Parquet needs string names"):
        codecs.get_codec("parquet").encode(pd.DataFrame({1: [1], "a": [2]}), tmp_path / "x.parquet")


def test_figure_renders_a_deterministic_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    def make() -> Figure:
        fig = Figure(figsize=(2, 2), dpi=50)
        fig.subplots().plot([1, 3, 2])
        return fig

    codec, path, back = roundtrip(make(), tmp_path, "a")
    assert (codec.name, path.suffix, codec.content_type) == ("png", ".png", "image/png")
    assert back == path  # a PNG decodes to its file: a Figure cannot be rebuilt
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and b"Software" not in data
    _, path2, _ = roundtrip(make(), tmp_path, "b")
    assert path2.read_bytes() == data


def test_pyplot_figures_are_closed_after_encoding(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    codecs.codec_for(fig).encode(fig, tmp_path / "p.png")
    assert not plt.fignum_exists(fig.number)


def test_unknown_values_are_refused_with_the_options() -> None:
    with pytest.raises(InvalidPipeline, match=r"a step returned a set, which datamill cannot store\. Return bytes"):
        codecs.codec_for({1, 2})


class Upper(codecs.Codec):
    name = "upper"
    ext = ".up"
    content_type = "text/x-upper"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and value.isupper()

    def encode(self, value: Any, path: Path) -> None:
        path.write_text(value.lower())

    def decode(self, path: Path) -> str:
        return path.read_text().upper()


def test_registry(tmp_path: Path) -> None:
    codecs.register(Upper())
    try:
        assert codecs.codec_names()[0] == "upper"
        codec, path, back = roundtrip("SHOUT", tmp_path)
        assert (codec.name, path.read_text(), back) == ("upper", "shout", "SHOUT")
        assert codecs.codec_for("quiet").name == "text"
        with pytest.raises(InvalidPipeline, match="a codec named 'upper' exists"):
            codecs.register(Upper())
        codecs.register(Upper(), replace=True)
    finally:
        codecs.unregister("upper")
    assert "upper" not in codecs.codec_names()
    with pytest.raises(InvalidPipeline, match="no codec named 'upper'"):
        codecs.get_codec("upper")


def test_replacing_and_restoring_a_builtin() -> None:
    before = codecs.codec_names()

    class Text2(codecs.TextCodec):
        ext = ".text"

    codecs.register(Text2(), replace=True)
    try:
        assert codecs.codec_for("x").ext == ".text"
    finally:
        codecs.unregister("text")
    assert codecs.codec_names() == before


@pytest.mark.slow
def test_pandas_and_matplotlib_are_imported_lazily() -> None:
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from datamill.pipeline import codecs\n"
        "for v in (b'x', 's', {'a': 1}, Path('p')):\n"
        "    codecs.codec_for(v)\n"
        "print('pandas' in sys.modules, 'matplotlib' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
