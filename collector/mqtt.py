"""Building the paho client from the settings: protocol, session, credentials, TLS."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from atmfleet.errors import ConfigError
from atmfleet.protocol import MAX_PAYLOAD_BYTES
from atmfleet.settings import Settings
from collector.buffer import ITEM_OVERHEAD_BYTES

#: MQTT v5 caps Receive Maximum at 65535.
MAX_RECEIVE_MAXIMUM = 65535
#: The most one held message can cost: a payload of the protocol's maximum size (larger
#: ones are held truncated to the dead-letter copy), a topic (held truncated to this), and
#: the bookkeeping (:data:`collector.buffer.ITEM_OVERHEAD_BYTES`).
MAX_HELD_TOPIC_CHARS = 1024
MAX_HELD_BYTES = MAX_PAYLOAD_BYTES + MAX_HELD_TOPIC_CHARS + ITEM_OVERHEAD_BYTES


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        parts = urlsplit(url)
        tls = parts.scheme in ("mqtts", "ssl")
        if not parts.hostname:
            raise ConfigError(f"ATMFLEET_MQTT_URL: no host in {url!r}")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise ConfigError(f"ATMFLEET_MQTT_URL: bad port in {url!r}") from None
        return cls(parts.hostname, port, tls)


def build_client(settings: Settings, client_id: str | None = None) -> mqtt.Client:
    """A paho client with manual acknowledgements and a persistent session.

    paho starts a v5 session clean on the first connect by default, which throws the
    broker's backlog away; here ``clean_start`` is always False (3.1.1: clean_session False).
    """
    cid = client_id or settings.collector.client_id
    v5 = settings.mqtt_protocol == "5"
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=cid,
        clean_session=None if v5 else False,
        protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        manual_ack=True,
    )
    if settings.mqtt_username:
        password = settings.mqtt_password.get_secret_value() if settings.mqtt_password else None
        client.username_pw_set(settings.mqtt_username, password)
    address = BrokerAddress.parse(settings.broker_urls()[0])
    if address.tls:
        for name in ("mqtt_ca_file", "mqtt_cert_file", "mqtt_key_file"):
            path = getattr(settings, name)
            if path is not None and not path.is_file():
                raise ConfigError(f"ATMFLEET_{name.upper()}: no such file {str(path)!r}")
        if (settings.mqtt_cert_file is None) != (settings.mqtt_key_file is None):
            raise ConfigError(
                "ATMFLEET_MQTT_CERT_FILE and ATMFLEET_MQTT_KEY_FILE go together "
                "(client certificate and its key)"
            )
        try:
            client.tls_set(
                ca_certs=str(settings.mqtt_ca_file) if settings.mqtt_ca_file else None,
                certfile=str(settings.mqtt_cert_file) if settings.mqtt_cert_file else None,
                keyfile=str(settings.mqtt_key_file) if settings.mqtt_key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"MQTT TLS files cannot be loaded: {exc}") from None
    elif settings.mqtt_ca_file or settings.mqtt_cert_file:
        raise ConfigError(
            "ATMFLEET_MQTT_CA_FILE/CERT_FILE are set but the broker URL "
            f"({settings.broker_urls()[0]!r}) is not mqtts://"
        )
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    return client


def receive_maximum(settings: Settings) -> int:
    """How many unacknowledged messages the broker may send us: ``max_inflight``, and no
    more than fit in ``max_buffered_bytes`` if every one had the largest size held."""
    cs = settings.collector
    return max(
        1, min(cs.max_inflight, cs.max_buffered_bytes // MAX_HELD_BYTES, MAX_RECEIVE_MAXIMUM)
    )


def connect_properties(settings: Settings) -> Properties | None:
    """v5 CONNECT properties: session expiry, and Receive Maximum = how many unacknowledged
    messages the broker may send us: the flow control (the collector never stops reading)."""
    if settings.mqtt_protocol != "5":
        return None
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = settings.collector.session_expiry_s
    props.ReceiveMaximum = receive_maximum(settings)
    return props
