"""Shipping a step's files through the blob store, for workers that share no file system with the scheduler.

A step call names files on the scheduler's machine: its input items, the outputs of the tasks it
reads, the directory it writes to. Workers on that machine (or on a shared file system, as on
most HPC clusters) read and write them where they are. Workers elsewhere cannot, so when the blob
store is one every machine reaches (S3), the call is *shipped*:

* on the scheduler, each input file becomes a :class:`Shipped`: an item by its blob digest (its
  bytes are in the store already), an upstream output by its bytes when small, else by the digest
  of a blob put there (nothing travels when the store has it);
* on the worker (:func:`run_shipped`), the files are fetched, verified, into a directory of its
  own, the step runs there, and each output goes back by its bytes when small, else as a blob;
* on the scheduler again (:func:`land`), the outputs are written into the call's output
  directory, where the engine keeps them as for any other executor.

The worker opens the store from a :class:`BlobSpec`: the URL, endpoint, region and profile only.
Credentials never travel through the cluster: workers take them from their own environment
(``DATAMILL_S3_ACCESS_KEY_ID``/``DATAMILL_S3_SECRET_ACCESS_KEY``, else boto3's chain: ``AWS_*``,
``~/.aws``, an instance role).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datamill.executors.base import Reporter
from datamill.pipeline.runner import ItemInput, OutputFile, StepCall, StepResult, UpstreamInput, run_step
from datamill.store.blobs import BlobStore, hasher

#: Files up to this size travel inside the call or its result (pickled), not as blobs.
SHIP_INLINE = 64 * 1024


@dataclass(frozen=True)
class BlobSpec:
    """How a worker opens the blob store: no secrets (see the module's text)."""

    url: str
    endpoint_url: str = ""
    region: str = ""
    profile: str = ""

    def open(self) -> BlobStore:
        """The store, with credentials from this process's environment."""
        from datamill.store.blobs import open_blob_store

        if not self.url.startswith("s3://"):
            return open_blob_store(self.url)
        from datamill.store.blobs.s3 import S3BlobStore, S3Options

        options = S3Options(
            endpoint_url=self.endpoint_url,
            region=self.region,
            profile=self.profile,
            access_key_id=os.environ.get("DATAMILL_S3_ACCESS_KEY_ID", ""),
            secret_access_key=os.environ.get("DATAMILL_S3_SECRET_ACCESS_KEY", ""),
        )
        return S3BlobStore(self.url, options)


def spec_of(store: BlobStore, url: str) -> BlobSpec | None:
    """The spec workers elsewhere open ``store`` by, or None when its files are local (nothing to ship).

    A store with local files (``file://``) is read in place by workers on this machine or on a
    shared file system; an S3 store is reached by every machine, so calls are shipped through it.
    """
    options = getattr(store, "options", None)
    if not url.startswith("s3://") or options is None:
        return None
    return BlobSpec(url, options.endpoint_url, options.region, options.profile)


@dataclass(frozen=True)
class Shipped:
    """One file of a shipped call: its bytes, or the digest of a blob holding them."""

    name: str
    data: bytes | None = None
    digest: str | None = None


@dataclass(frozen=True)
class ShippedCall:
    """A step call whose local files are replaced by :class:`Shipped` ones (keyed by the scheduler's path)."""

    call: StepCall
    files: dict[str, Shipped]


def ship(call: StepCall, store: BlobStore) -> ShippedCall:
    """Ship ``call``'s input files (on the scheduler, in a thread: it may hash and upload)."""
    files: dict[str, Shipped] = {}
    for item in (call.item, *call.items):
        if item is None:
            continue
        for where in (item.path, item.source):
            path = None if where is None else Path(where)  # strings on the values path
            if path is not None and str(path) not in files and path.exists():
                files[str(path)] = Shipped(path.name, digest=item.ref.digest)
    for up in call.upstream.values():
        for outs in up.outputs:
            for o in outs:
                if o.data is None and str(o.path) not in files:
                    files[str(o.path)] = _ship_file(o.path, store)
    return ShippedCall(call, files)


def _ship_file(path: Path, store: BlobStore) -> Shipped:
    size = path.stat().st_size
    if size <= SHIP_INLINE:
        return Shipped(path.name, data=path.read_bytes())
    h = hasher()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    digest = f"blake3:{h.hexdigest()}"
    with open(path, "rb") as f:  # the store skips the upload when it holds the digest already
        store.put(f, expected_digest=digest, expected_size=size)
    return Shipped(path.name, digest=digest)


_STORES: dict[BlobSpec, BlobStore] = {}


def _store(spec: BlobSpec) -> BlobStore:
    # One open store (one connection pool) per worker process, not one per call.
    if spec not in _STORES:
        _STORES[spec] = spec.open()
    return _STORES[spec]


def run_shipped(reporter: Reporter, shipped: ShippedCall, spec: BlobSpec) -> tuple[StepResult, list[Shipped]]:
    """On a worker: fetch the inputs, run the step in a directory of its own, ship the outputs back.

    Returns the step's result (its outputs' paths relative to the output directory) and, in the
    same order, each file output's bytes or blob.
    """
    store = _store(spec)
    with tempfile.TemporaryDirectory(prefix="datamill-task-") as tmp:
        root = Path(tmp)
        local: dict[str, Path] = {}
        for i, (orig, f) in enumerate(shipped.files.items()):
            target = root / "in" / str(i) / f.name
            target.parent.mkdir(parents=True)
            if f.data is not None:
                target.write_bytes(f.data)
            else:
                assert f.digest is not None
                with open(target, "wb") as out:
                    store.copy_to(f.digest, out.fileno())  # verified as it streams
            local[orig] = target
        call = _relocated(shipped.call, local, root)
        result = run_step(reporter, call)
        back: list[Shipped] = []
        outs: list[OutputFile] = []
        for o in result.outputs:
            rel = Path(o.name)
            if o.data is None:
                back.append(_ship_output(o.path, store))
            else:
                back.append(Shipped(o.name))
            outs.append(dataclasses.replace(o, path=rel))
        return StepResult(tuple(outs), result.seconds), back


def _ship_output(path: Path, store: BlobStore) -> Shipped:
    if path.stat().st_size <= SHIP_INLINE:
        return Shipped(path.name, data=path.read_bytes())
    with open(path, "rb") as f:
        return Shipped(path.name, digest=store.put(f).digest)


def _relocated(call: StepCall, local: dict[str, Path], root: Path) -> StepCall:
    """``call`` with its files at their fetched copies and its directories under ``root``."""

    def item(i: ItemInput) -> ItemInput:
        # The fetched copy is the item's file: no blob-store source to link from here.
        got = local.get(str(i.path)) or local.get(str(i.source))
        return i if got is None else dataclasses.replace(i, path=got, source=None)

    def upstream(u: UpstreamInput) -> UpstreamInput:
        outs = tuple(
            tuple(dataclasses.replace(o, path=local.get(str(o.path), o.path)) for o in os_) for os_ in u.outputs
        )
        return dataclasses.replace(u, outputs=outs)

    return dataclasses.replace(
        call,
        item=None if call.item is None else item(call.item),
        items=tuple(item(i) for i in call.items),
        upstream={k: upstream(u) for k, u in call.upstream.items()},
        output_dir=root / "out",
        scratch_dir=root / "scratch",
    )


def land(result: StepResult, back: list[Shipped], output_dir: Path, store: BlobStore) -> StepResult:
    """On the scheduler: write the shipped outputs into ``output_dir``; the result as if the step ran here."""
    outs: list[OutputFile] = []
    for o, f in zip(result.outputs, back, strict=True):
        if o.data is not None:
            outs.append(o)
            continue
        target = output_dir / o.path
        target.parent.mkdir(parents=True, exist_ok=True)
        if f.data is not None:
            target.write_bytes(f.data)
        else:
            assert f.digest is not None
            with open(target, "wb") as out:
                store.copy_to(f.digest, out.fileno())
        outs.append(dataclasses.replace(o, path=target))
    return StepResult(tuple(outs), result.seconds)


def shipped_args(call: Any) -> StepCall | None:
    """The :class:`StepCall` of a ``run_step`` call's arguments, or None for any other call."""
    fn, args = getattr(call, "fn", None), tuple(getattr(call, "args", ()))
    if fn is run_step and len(args) == 1 and isinstance(args[0], StepCall):
        return args[0]
    return None
