"""Which task outputs keep a blob alive: only those kept as blobs (0017_outputblobs).

An output kept inline holds its bytes in its row; the digest index covers the outputs kept as
blobs only, and garbage collection asks only about those.
"""

from __future__ import annotations

from datamill.engine.workdir import INLINE_LIMIT
from datamill.store import garbage
from datamill.store.blobs import BlobInfo

from .engine_world import World
from .pipelines import ref


def test_an_inline_output_keeps_no_blob_alive_an_output_kept_as_a_blob_does(db_world: World) -> None:
    w = db_world
    w.put("small.txt", "Small words")
    w.put("big.txt", "Big " * INLINE_LIMIT)
    run = w.run(ref("alone"), dest=None)  # published outputs would be item versions, which refer to blobs
    assert run["status"] == "succeeded", run
    tasks = w.tasks(run["id"])
    small = tasks["parse[Raw/small.txt]"].outputs[0]
    big = tasks["parse[Raw/big.txt]"].outputs[0]
    assert small.inline is not None and big.inline is None
    home = w.home
    # Blob rows for both digests that nothing else refers to (as a version deleted since leaves):
    # the small output's bytes as a blob too.
    same = home.blobs.put(small.inline)
    assert same.digest == small.digest
    with home.db.write() as conn:
        garbage.hold_blobs(conn, home.blobs, [same, BlobInfo(big.digest, big.size)])
    assert garbage.collect_garbage(home.db, home.blobs) == 1
    assert not home.blobs.exists(small.digest)
    assert home.blobs.exists(big.digest)
    # The inline output still reads back from its row.
    assert w.tasks(run["id"])["parse[Raw/small.txt]"].outputs[0].inline == small.inline
    assert w.engine.get_run(w.admin, run["id"])["status"] == "succeeded"
