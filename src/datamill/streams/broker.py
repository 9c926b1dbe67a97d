"""Where the Kafka broker is and how to log in: settings for confluent-kafka clients, secrets kept out of sight.

The broker comes from a stream dataflow's own fields, else from the settings registry
(``kafka_bootstrap``, ``kafka_security_protocol``, ``kafka_sasl_*``; ``DATAMILL_KAFKA_*`` variables or
``datamill.toml``). The SASL password is never shown: :meth:`Broker.public` masks it, and its
``repr`` leaves it out, so it reaches no log.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from datamill.config import Settings
from datamill.errors import InvalidInput, Unavailable

#: The dataflow/config field names of broker settings, in the order they are shown.
FIELDS = ("bootstrap", "security_protocol", "sasl_mechanism", "sasl_username", "sasl_password")
PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MASK = "***"
#: Consumer settings that make a group join quickly and notice a dead member within seconds.
GROUP_TIMEOUTS = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}


def kafka() -> Any:
    """The ``confluent_kafka`` module, imported only when a stream is used (the ``[kafka]`` extra)."""
    try:
        import confluent_kafka
    except ImportError:  # pragma: no cover - installed wherever the tests run
        raise Unavailable("Kafka streams need confluent-kafka: pip install 'datamill[kafka]'") from None
    return confluent_kafka


@dataclass(frozen=True)
class Broker:
    """A Kafka broker and the credentials to reach it."""

    bootstrap: str
    security_protocol: str = ""
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)

    @classmethod
    def from_settings(cls, settings: Settings, bootstrap: str | None = None) -> Broker:
        """The broker of the settings registry, ``bootstrap`` (e.g. ``--bootstrap``) replacing its address."""
        return cls.parse(
            {
                "bootstrap": bootstrap or settings.kafka_bootstrap,
                "security_protocol": settings.kafka_security_protocol,
                "sasl_mechanism": settings.kafka_sasl_mechanism,
                "sasl_username": settings.kafka_sasl_username,
                "sasl_password": settings.kafka_sasl_password,
            }
        )

    @classmethod
    def parse(cls, values: Mapping[str, Any], where: str = "broker") -> Broker:
        """Checked broker settings from a mapping of :data:`FIELDS`; :class:`InvalidInput` naming the field."""
        unknown = sorted(set(values) - set(FIELDS))
        if unknown:
            raise InvalidInput(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}")
        text = {k: str(values.get(k) or "").strip() for k in FIELDS}
        if not text["bootstrap"]:
            raise InvalidInput(
                f"{where}: no Kafka broker; pass --bootstrap HOST:PORT or set kafka_bootstrap "
                "(DATAMILL_KAFKA_BOOTSTRAP or datamill.toml)"
            )
        for server in text["bootstrap"].split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise InvalidInput(f"{where}: bootstrap {server.strip()!r} is not HOST:PORT", field="bootstrap")
        proto = text["security_protocol"].upper()
        if proto and proto not in PROTOCOLS:
            raise InvalidInput(
                f"{where}: security protocol {proto!r} is not one of {', '.join(PROTOCOLS)}", field="security_protocol"
            )
        if text["sasl_password"] and not text["sasl_username"]:
            raise InvalidInput(f"{where}: a SASL password needs a SASL user name", field="sasl_username")
        text["security_protocol"] = proto
        return cls(**text)

    def public(self) -> dict[str, str]:
        """The settings for display and storage answers: the password masked."""
        out = {k: getattr(self, k) for k in FIELDS if getattr(self, k)}
        if self.sasl_password:
            out["sasl_password"] = MASK
        return out

    def stored(self) -> dict[str, str]:
        """The non-empty settings as stored in a dataflow's configuration (the password included)."""
        return {k: getattr(self, k) for k in FIELDS if getattr(self, k)}

    def client_config(self) -> dict[str, Any]:
        """librdkafka settings common to producers and consumers."""
        cfg: dict[str, Any] = {"bootstrap.servers": self.bootstrap}
        if self.security_protocol:
            cfg["security.protocol"] = self.security_protocol
        if self.sasl_mechanism:
            cfg["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            cfg["sasl.username"] = self.sasl_username
            cfg["sasl.password"] = self.sasl_password
        return cfg

    def producer_config(self, chunk_size: int) -> dict[str, Any]:
        """A producer that waits for every replica, retries without duplicating, and fits a chunk in a message."""
        from datamill.streams.chunks import MESSAGE_OVERHEAD

        return {
            **self.client_config(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 20,
            "compression.type": "lz4",
            "message.max.bytes": max(1_000_000, chunk_size + MESSAGE_OVERHEAD),
        }

    def consumer_config(self, group: str, max_message: int = 1 << 26) -> dict[str, Any]:
        """A consumer in ``group`` that never commits to Kafka by itself (datamill keeps its own offsets)."""
        from datamill.streams.chunks import MESSAGE_OVERHEAD

        return {
            **self.client_config(),
            **GROUP_TIMEOUTS,
            "group.id": group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            # The broker answers a fetch as soon as data is there, or after this: a new file's first
            # chunk is not held back for librdkafka's default 500 ms.
            "fetch.wait.max.ms": 20,
            "message.max.bytes": max_message + MESSAGE_OVERHEAD,
            "fetch.max.bytes": max_message + MESSAGE_OVERHEAD,
            "max.partition.fetch.bytes": max_message + MESSAGE_OVERHEAD,
            # Bounds what librdkafka holds in memory ahead of datamill (back-pressure for big files).
            "queued.max.messages.kbytes": 65536,
        }
