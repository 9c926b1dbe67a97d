"""``datamill stream send`` -> a real broker -> ``datamill stream receive``: files come back byte for byte."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from datamill.errors import InvalidInput
from datamill.streams.broker import Broker, kafka
from datamill.streams.chunks import Chunk
from datamill.streams.receiver import receive
from datamill.streams.sender import send
from tests.helpers import cli_env, datamill
from tests.streams.conftest import TansuBroker

CHUNK = 1024


def tree(root: Path) -> dict[str, str]:
    """Relative path -> SHA-512 of every file below ``root`` (staging left out)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha512(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".datamill-partial" not in p.parts
    }


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    """0 B, 1 B, exactly one chunk, many chunks, a few hundred KB, Unicode names, subdirectories."""
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "Messung été").mkdir()
    (src / "empty.txt").write_bytes(b"")
    (src / "one.bin").write_bytes(b"x")
    (src / "sub" / "exact.bin").write_bytes(os.urandom(CHUNK))
    (src / "sub" / "deeper" / "many.bin").write_bytes(os.urandom(CHUNK * 7 + 3))
    (src / "Messung été" / "δ-data.bin").write_bytes(os.urandom(300_000))
    (src / ".hidden").write_bytes(b"not filtered")
    return src


@pytest.mark.slow
def test_send_then_receive_round_trip(kafka_broker: TansuBroker, topic: str, sample: Path, tmp_path: Path) -> None:
    broker = Broker(kafka_broker.bootstrap)
    report = send([sample], topic, broker, chunk_size=CHUNK)
    assert report.files == 6 and report.messages == 1 + 1 + 1 + 8 + 293 + 1
    out = tmp_path / "out"
    got = receive(topic, broker, out, stop_after=8.0)
    assert got.bad == [] and got.incomplete == []
    assert tree(out) == tree(sample)
    # A second receive into the same directory resumes its group: nothing new arrives.
    again = receive(topic, broker, out, stop_after=8.0)
    assert again.messages == 0


@pytest.mark.slow
def test_cli_send_and_receive(kafka_broker: TansuBroker, topic: str, sample: Path, tmp_path: Path) -> None:
    env = cli_env(DATAMILL_KAFKA_BOOTSTRAP=kafka_broker.bootstrap)
    sent = subprocess.run(
        datamill("stream", "send", str(sample), "--topic", topic, "--chunk-size", "4096", "--json"),
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    assert '"files": 6' in sent.stdout
    out = tmp_path / "out"
    got = subprocess.run(
        datamill("stream", "receive", str(out), "--topic", topic, "--bootstrap", kafka_broker.bootstrap,
                 "--stop-after", "8"),
        env=cli_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert tree(out) == tree(sample)
    assert "sub/deeper/many.bin" in got.stdout.splitlines()


def test_cli_refuses_a_chunk_size_that_is_not_a_power_of_two(sample: Path) -> None:
    r = subprocess.run(
        datamill("stream", "send", str(sample), "--topic", "t", "--bootstrap", "127.0.0.1:9", "--chunk-size", "1000"),
        env=cli_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 1 and "power of two" in r.stderr


def test_cli_without_a_broker_says_how_to_name_one(sample: Path) -> None:
    r = subprocess.run(
        datamill("stream", "send", str(sample), "--topic", "t"),
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "--bootstrap" in r.stderr and "kafka_bootstrap" in r.stderr


def test_broker_settings_are_checked_and_the_password_masked() -> None:
    b = Broker.parse(
        {"bootstrap": "h:9092", "sasl_username": "u", "sasl_password": "s3cret", "security_protocol": "sasl_ssl"}
    )
    assert b.public()["sasl_password"] == "***" and "s3cret" not in repr(b)
    assert b.client_config()["security.protocol"] == "SASL_SSL"
    for bad, words in (
        ({"bootstrap": "nohost"}, "HOST:PORT"),
        ({"bootstrap": "h:1", "security_protocol": "TLS"}, "security protocol"),
        ({"bootstrap": "h:1", "sasl_password": "p"}, "needs a SASL user"),
        ({"bootstrap": "h:1", "colour": "red"}, "unknown field"),
    ):
        with pytest.raises(InvalidInput, match=words):
            Broker.parse(bad)


@pytest.mark.slow
def test_receive_reports_bad_messages_and_writes_nothing_for_them(
    kafka_broker: TansuBroker, topic: str, tmp_path: Path
) -> None:
    ck = kafka()
    p = ck.Producer({"bootstrap.servers": kafka_broker.bootstrap})
    good = b"fine"
    h = hashlib.sha512(good).digest()
    p.produce(topic, key=b"k", value=b"\xc1 not msgpack")
    p.produce(topic, key=b"k", value=Chunk("evil", h, h, 0, 1, 1, "../../up", "", good).encode())
    p.produce(topic, key=b"k", value=Chunk("ok.txt", h, h, 0, 1, 1, "", "", good).encode())
    assert p.flush(30) == 0
    out = tmp_path / "out"
    got = receive(topic, Broker(kafka_broker.bootstrap), out, stop_after=8.0)
    assert len(got.bad) == 2
    assert any("not msgpack" in b for b in got.bad) and any("'..' segment" in b for b in got.bad)
    assert tree(out) == {"ok.txt": hashlib.sha512(good).hexdigest()}
    assert not (tmp_path / "up").exists()


def test_the_kafka_password_setting_is_masked_in_settings_displays() -> None:
    from datamill.config import load_settings

    env = {
        "DATAMILL_KAFKA_SASL_PASSWORD": "s3cret",
        "DATAMILL_KAFKA_SASL_USERNAME": "u",
        "DATAMILL_KAFKA_BOOTSTRAP": "k:9092",
    }
    s = load_settings(environ=env)
    assert s.public_dict()["kafka_sasl_password"] == "***" and "s3cret" not in repr(s)
    assert Broker.from_settings(s).client_config()["bootstrap.servers"] == "k:9092"
    r = subprocess.run(
        datamill("config", "--json"),
        env=cli_env(DATAMILL_KAFKA_SASL_PASSWORD="s3cret"), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "s3cret" not in r.stdout + r.stderr and '"kafka_sasl_password": "***"' in r.stdout
