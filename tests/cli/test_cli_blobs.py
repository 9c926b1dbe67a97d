"""``datamill blobs migrate`` (a home's blobs to a real S3 server) and ``datamill blobs gc``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from datamill.home import Home
from datamill.store.blobs import LocalBlobStore
from tests.cli.conftest import Dm
from tests.conftest import S3Server
from tests.helpers import open_home


def _s3_env(server: S3Server) -> dict[str, str]:
    return {
        "DATAMILL_S3_ENDPOINT_URL": server.endpoint,
        "DATAMILL_S3_REGION": "us-east-1",
        "DATAMILL_S3_ACCESS_KEY_ID": server.access_key,
        "DATAMILL_S3_SECRET_ACCESS_KEY": server.secret_key,
        "DATAMILL_DEMO": "false",
    }


def test_migrate_to_s3_copies_verifies_and_resumes(dm: Dm, files: Path, s3_server: S3Server, tmp_path: Path) -> None:
    env = _s3_env(s3_server)
    dm.ok("folder", "create", "/Raw", env=env)
    dm.ok("put", str(files / "a.csv"), str(files / "run-7"), "/Raw", env=env)
    url = f"s3://{s3_server.new_bucket()}/lab"

    # A corrupted local blob is reported and left out; everything else moves.
    home = open_home(dm.home)
    try:
        blobs = home.blobs
        assert isinstance(blobs, LocalBlobStore)
        info = home.store.get_version(home.admin, "/Raw/a.csv")
        bad = blobs.local_path(info.digest)
        assert bad is not None
        os.chmod(bad, 0o644)
        bad.write_bytes(b"x,y\n1,3\n")
    finally:
        home.close()
    first = dm("blobs", "migrate", "--to", url, env=env)
    assert first.exit_code == 1, first.stderr
    assert "2 copied, 0 already there, 1 failed, of 3" in first.stderr
    assert info.digest in first.stderr and "corrupted" in first.stderr
    assert s3_server.secret_key not in first.stderr + first.stdout

    bad.write_bytes(b"x,y\n1,2\n")  # restored: the second run copies only what is missing
    second = dm.ok("blobs", "migrate", "--to", url, env=env)
    assert "1 copied, 2 already there, 0 failed, of 3" in second.stderr
    assert f"blob_url = '{url}'" in second.stderr

    # The home, pointed at the bucket, reads every item from there.
    moved = open_home(dm.home, blob_url=url, **{k[9:].lower(): v for k, v in env.items() if "S3" in k})
    try:
        for name in ("a.csv", "run-7/x.txt", "run-7/sub/y.txt"):
            _, stream = moved.store.open_version(moved.admin, f"/Raw/{name}")
            with stream:
                assert stream.read() == (files / name).read_bytes()
    finally:
        moved.close()


def test_migrate_refuses_a_server_url_and_names_a_bad_target(dm: Dm, s3_server: S3Server) -> None:
    result = dm("--url", "http://127.0.0.1:1", "blobs", "migrate", "--to", "s3://x/y", home=False)
    assert result.exit_code != 0 and "local home" in result.stderr
    env = {**_s3_env(s3_server), "DATAMILL_S3_SECRET_ACCESS_KEY": "wrong-secret"}
    result = dm("blobs", "migrate", "--to", f"s3://{s3_server.new_bucket()}", env=env)
    assert result.exit_code != 0
    assert "refused the credentials" in result.stderr and "wrong-secret" not in result.stderr


def test_gc_removes_unreferenced_blobs(dm: Dm, files: Path) -> None:
    dm.ok("folder", "create", "/Raw")
    dm.ok("put", str(files / "a.csv"), "/Raw")
    home: Home = open_home(dm.home)
    try:
        orphan = home.blobs.put(b"nobody refers to me")
        from datamill.store.garbage import hold_blobs

        with home.db.write() as conn:
            hold_blobs(conn, home.blobs, [orphan])  # recorded, then never referenced
        digest: Any = orphan.digest
    finally:
        home.close()
    result = dm.ok("blobs", "gc")
    assert "1 unreferenced blobs removed" in result.stderr
    home = open_home(dm.home)
    try:
        assert not home.blobs.exists(digest)
        info = home.store.get_version(home.admin, "/Raw/a.csv")
        assert home.blobs.exists(info.digest)
    finally:
        home.close()
