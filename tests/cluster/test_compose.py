"""``deploy/compose.yaml``: parsed and checked against what datamill reads (no container engine runs it here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from datamill.cli.commands import COMMANDS
from datamill.config import SETTINGS

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def test_it_brings_up_postgres_s3_two_api_servers_and_two_workers() -> None:
    services = _compose()["services"]
    assert {"postgres", "seaweedfs", "api1", "api2", "worker1", "worker2"} <= set(services)
    for name in ("api1", "api2"):
        assert services[name]["command"][:2] == ["up", "--api-only"]
    for name in ("worker1", "worker2"):
        assert services[name]["command"] == ["worker"]
    assert {"up", "worker"} <= set(COMMANDS)  # the commands it runs exist


def test_datamill_services_share_one_database_and_one_bucket() -> None:
    services = _compose()["services"]
    envs = [services[n]["environment"] for n in ("api1", "api2", "worker1", "worker2")]
    assert all(env == envs[0] for env in envs)
    env = envs[0]
    known = {f"DATAMILL_{s.key.upper()}" for s in SETTINGS}
    assert set(env) <= known, set(env) - known  # every variable is a setting datamill reads
    db_url = env["DATAMILL_DATABASE_URL"]
    assert db_url.startswith("postgresql://") and "@postgres:5432/" in db_url
    assert env["DATAMILL_BLOB_URL"].startswith("s3://")
    assert env["DATAMILL_S3_ENDPOINT_URL"].startswith("http://seaweedfs:")
    # The S3 identity the workers use is the one SeaweedFS starts with.
    seaweed = services["seaweedfs"]["environment"]
    assert (seaweed["AWS_ACCESS_KEY_ID"], seaweed["AWS_SECRET_ACCESS_KEY"]) == (
        env["DATAMILL_S3_ACCESS_KEY_ID"],
        env["DATAMILL_S3_SECRET_ACCESS_KEY"],
    )


def test_api_servers_publish_on_loopback_only_and_wait_for_their_stores() -> None:
    services = _compose()["services"]
    for name in ("api1", "api2"):
        ports = services[name]["ports"]
        assert ports and all(p.startswith("127.0.0.1:") for p in ports)
    for name in ("postgres", "seaweedfs"):
        assert "ports" not in services[name]  # reachable only from the compose network
        assert services[name]["healthcheck"]["test"]
    for name in ("api1", "worker1"):
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert services[name]["depends_on"]["seaweedfs"]["condition"] == "service_healthy"


def test_the_image_has_the_extras_the_cluster_needs() -> None:
    text = (DEPLOY / "Containerfile").read_text()
    assert "'.[s3,dask]'" in text and 'ENTRYPOINT ["datamill"]' in text
    assert "USER datamill" in text  # not root
