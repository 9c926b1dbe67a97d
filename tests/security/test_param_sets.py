"""``GET /runs/{id}/params/{digest}``: a run's parameter set, for whoever may read the run, and no oracle.

A digest is the address of a set shared by every run that uses it: the route answers it only
through a run the caller may read that uses it, and answers a digest it does not know in the same
words as one the caller may not have, so that which sets exist cannot be learned from it.
"""

from __future__ import annotations

import httpx

from datamill.client.local import LocalClient
from tests.engine.pipelines import ref

from .world import DEST, ROLES, SRC, World

TABLE = {"kestrel-alpha": "first", "kestrel-beta": "second"}


def test_a_run_s_set_answers_as_the_run_does_and_unknown_ones_alike(http: httpx.Client, world: World) -> None:
    admin = LocalClient(world.home).as_user("site_admin")
    run_id = admin.submit_run(ref("lookups"), SRC, DEST, params={"table": TABLE})
    listed = http.get(f"/api/v1/runs/{run_id}/tasks", headers=world.headers("site_admin")).json()
    digest = listed[0]["params_digest"]
    unknown = "blake3:" + "0" * 64
    for role in ROLES:
        headers = world.headers(role)
        run = http.get(f"/api/v1/runs/{run_id}", headers=headers)
        real = http.get(f"/api/v1/runs/{run_id}/params/{digest}", headers=headers)
        assert real.status_code == run.status_code, (role, real.text)
        if run.status_code == 200:
            assert real.json() == {"table": TABLE}, role
            missing = http.get(f"/api/v1/runs/{run_id}/params/{unknown}", headers=headers)
            assert missing.status_code == 404 and missing.json()["code"] == "not_found", role
            assert digest not in missing.text and run_id != world.run_ok
            # A set that exists, through a run that does not use it: the same answer as no set.
            elsewhere = http.get(f"/api/v1/runs/{world.run_ok}/params/{digest}", headers=headers)
            assert elsewhere.status_code == 404, role
            assert elsewhere.json()["error"].replace(digest, "D") == http.get(
                f"/api/v1/runs/{world.run_ok}/params/{unknown}", headers=headers
            ).json()["error"].replace(unknown, "D")
        else:
            # Not the role's run: the very answer a digest that exists nowhere gets.
            missing = http.get(f"/api/v1/runs/{run_id}/params/{unknown}", headers=headers)
            assert (missing.status_code, missing.json()) == (real.status_code, real.json()), role
            assert "kestrel" not in real.text, role
    assert {r for r in ROLES if http.get(f"/api/v1/runs/{run_id}", headers=world.headers(r)).status_code == 404} == {
        "other"
    }
