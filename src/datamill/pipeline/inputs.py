"""Pipeline inputs: :class:`InputRef` (which item version, as the planner sees it) and :class:`InputFile`
(the same, with a local file, as a step sees it).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

import blake3

from datamill.errors import BlobNotFound

__all__ = ["InputFile", "InputRef"]

_PATH = type(Path())


@dataclass(frozen=True)
class InputRef:
    """One exact input item version.

    ``metadata`` travels with the item for steps to read but is never part of a task key: a
    metadata-only change must not re-run data steps. ``item_id``/``version_id`` are ``None``
    for inputs that are not (yet) in a store, e.g. in tests.
    """

    item_id: int | None
    version_id: int | None
    folder: str
    name: str
    version: int
    digest: str
    size: int
    content_type: str
    metadata: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @property
    def path(self) -> str:
        """``folder/name`` (just ``name`` at the root): what task ids and messages show."""
        folder = self.folder.strip("/")  # once: the scheduler asks for it a few times per task
        return f"{folder}/{self.name}" if folder else self.name

    @property
    def stem(self) -> str:
        """The name without its last suffix: ``"a.csv"`` → ``"a"``."""
        # What PurePosixPath(name).stem gives, without making a path (the planner asks per task).
        name = self.name.rpartition("/")[2]
        dot = name.rfind(".")
        return name[:dot] if 0 < dot < len(name) - 1 else name

    @property
    def suffix(self) -> str:
        """The last suffix with its dot: ``"a.csv"`` → ``".csv"``."""
        return PurePosixPath(self.name).suffix

    @classmethod
    def for_bytes(
        cls,
        name: str,
        data: bytes,
        *,
        folder: str = "",
        version: int = 1,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, Any] | None = None,
        item_id: int | None = None,
        version_id: int | None = None,
    ) -> InputRef:
        """An input for ``data`` with its BLAKE3 digest computed here (handy in tests and scripts)."""
        return cls(
            item_id=item_id,
            version_id=version_id,
            folder=folder,
            name=name,
            version=version,
            digest="blake3:" + blake3.blake3(data).hexdigest(),
            size=len(data),
            content_type=content_type,
            metadata=dict(metadata or {}),
        )


class InputFile:
    """An input item as a step receives it (``item`` / ``items``, ``ctx.item``): its facts plus a local file.

    Usable wherever a path is: ``pandas.read_csv(item)`` and ``open(item)`` work. A step that
    does not take ``item`` may get ``ctx.item`` without a local copy; reading it then raises.

    With a ``source`` (a local file holding the same bytes, such as the blob store's file), reads
    go to the source and ``path`` is made only when asked for: a link named like the item at
    ``path``, so steps that look at its suffix still work, while steps that only read the item
    cost no directory and no link.
    """

    __slots__ = ("_path", "_source", "ref")

    def __init__(
        self, ref: InputRef, path: str | os.PathLike[str] | None, source: str | os.PathLike[str] | None = None
    ) -> None:
        self.ref = ref
        # Kept as given (a Path, or a string made a Path when used): parsing paths costs more than a
        # trivial step, and most steps read only the item's name or bytes.
        self._path: str | os.PathLike[str] | None = path
        self._source = None if path is None else source

    @property
    def path(self) -> Path:
        """The local file holding the item's bytes (named like the item; linked on first use)."""
        path = self._path
        if path is None:
            raise ValueError(
                f"input {self.ref.path!r} has no local copy in this task; take 'item' as an argument to get one"
            )
        if type(path) is not _PATH:
            path = self._path = Path(path)
        assert isinstance(path, Path)
        if self._source is not None:
            # The scheduler did not look for the source (see WorkDirs.look_for_items): a link to
            # nothing would fail later, naming the link, not the missing blob.
            if not os.path.isfile(self._source):
                raise self._missing()
            self._link(self._source, path)
            self._source = None
        return path

    @staticmethod
    def _link(source: str | os.PathLike[str], path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # the same input twice in one task: the link is there
            os.symlink(source, path)

    def _missing(self) -> BlobNotFound:
        """The error for a source that is not there: its blob is missing from the store."""
        return BlobNotFound(
            f"input {self.ref.path!r}: blob {self.ref.digest} is missing from the blob store", digest=self.ref.digest
        )

    def _readable(self) -> Path:
        """Where to read the bytes: the source when there is one (no link needed), else :attr:`path`."""
        return Path(self._source) if self._source is not None else self.path

    def _read(self) -> bytes:
        """The bytes; a missing source says its blob is missing (nobody looked for it before)."""
        with self._open("rb") as f:
            data: bytes = f.read()
        return data

    @property
    def fetched(self) -> bool:
        """Whether the item's bytes are available locally."""
        return self._path is not None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, InputFile) and (self.ref, self._where()) == (other.ref, other._where())

    def __hash__(self) -> int:
        return hash((self.ref, self._where()))

    def _where(self) -> Path | None:
        """The local path as a Path (equal whether it was given as a string or a Path), not linked."""
        return None if self._path is None else Path(self._path)

    def __repr__(self) -> str:
        return f"InputFile({self.ref.path!r}, {str(self._path) if self._path else None!r})"

    def __getstate__(self) -> tuple[InputRef, str | os.PathLike[str] | None, str | os.PathLike[str] | None]:
        return self.ref, self._path, self._source

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.ref, self._path = state[0], state[1]
        self._source = state[2] if len(state) > 2 else None

    @property
    def name(self) -> str:
        """The item's name, e.g. ``"a.csv"``."""
        return self.ref.name

    @property
    def stem(self) -> str:
        """The name without its last suffix."""
        return self.ref.stem

    @property
    def suffix(self) -> str:
        """The last suffix with its dot, e.g. ``".csv"``."""
        return self.ref.suffix

    @property
    def folder(self) -> str:
        """The folder path the item lives in."""
        return self.ref.folder

    @property
    def metadata(self) -> Mapping[str, Any]:
        """The item's metadata (not part of task keys)."""
        return self.ref.metadata

    @property
    def version(self) -> int:
        """The item's version number."""
        return self.ref.version

    @property
    def digest(self) -> str:
        """The content digest of this version."""
        return self.ref.digest

    @property
    def size(self) -> int:
        """Size in bytes."""
        return self.ref.size

    @property
    def content_type(self) -> str:
        """The item's content type."""
        return self.ref.content_type

    def read_bytes(self) -> bytes:
        """The file's bytes."""
        return self._read()

    def read_text(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        """The file's text (UTF-8 unless told otherwise)."""
        return self._read().decode(encoding, errors)

    def open(self, mode: str = "rb") -> IO[Any]:
        """Open the local file (read-only modes only: inputs are immutable)."""
        if any(c in mode for c in "wax+"):
            raise ValueError(f"inputs are read-only; cannot open {self.name!r} with mode {mode!r}")
        return self._open(mode)

    def _open(self, mode: str) -> IO[Any]:
        """:meth:`open` of a read-only ``mode``; a missing source says its blob is missing."""
        try:
            return open(self._readable(), mode)
        except FileNotFoundError:
            if self._source is None:
                raise
            raise self._missing() from None

    def __fspath__(self) -> str:
        return os.fspath(self.path)
