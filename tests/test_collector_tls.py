"""Production connections: a broker that demands TLS, a client certificate and a password."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from atmfleet.errors import ConfigError
from collector.mqtt import build_client
from tests.test_collector_service import (
    Broker,
    running,
    settings_for,
    start_broker,
    states,
    stored,
    wait_until,
)

pytestmark = pytest.mark.integration


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(folder: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by it."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.pem", cwd=folder)  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=folder)  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", f"{name}.pem",
                cwd=folder)  # fmt: skip


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Path]]:
    if not shutil.which("openssl") or not shutil.which("mosquitto_passwd"):
        pytest.fail("openssl and mosquitto_passwd are needed for the TLS test")
    folder = tmp_path_factory.mktemp("tls")
    make_pki(folder)
    passwords = folder / "passwords"
    passwords.write_text("")
    subprocess.run(
        ["mosquitto_passwd", "-b", str(passwords), "ingest", "pa55-word"],
        check=True,
        capture_output=True,
    )
    broker = start_broker(
        folder,
        extra=(
            f"cafile {folder / 'ca.pem'}\ncertfile {folder / 'server.pem'}\n"
            f"keyfile {folder / 'server.key'}\nrequire_certificate true\n"
            f"password_file {passwords}\n"
        ),
    )
    # With a password file, a client that gives a username must give its password.
    broker.url = broker.url.replace("mqtt://", "mqtts://")
    yield broker, folder
    broker.process.terminate()
    broker.process.wait(10)


class TestTls:
    def test_collects_over_tls_with_a_client_certificate_and_a_password(
        self, tls_broker: tuple[Broker, Path], db: str, run_id: str
    ) -> None:
        broker, pki = tls_broker
        top = {
            "mqtt_ca_file": pki / "ca.pem",
            "mqtt_cert_file": pki / "client.pem",
            "mqtt_key_file": pki / "client.key",
            "mqtt_username": "ingest",
            "mqtt_password": "pa55-word",
        }
        settings = settings_for(broker.url, db, top=top)
        with running(settings, f"c{run_id}"):
            publisher = build_client(settings, f"p{run_id}")
            host, port = broker.url.removeprefix("mqtts://").split(":")
            publisher.connect(host, int(port))
            publisher.loop_start()
            infos = [publisher.publish(t, p, qos=1) for t, p in states(f"t{run_id}", range(20))]
            for info in infos:
                info.wait_for_publish(10)
            publisher.disconnect()
            publisher.loop_stop()
            wait_until(lambda: stored(db) == 20, what="20 rows over TLS")

    def test_a_wrong_password_is_refused_by_the_broker(
        self, tls_broker: tuple[Broker, Path], db: str, run_id: str
    ) -> None:
        broker, pki = tls_broker
        top = {
            "mqtt_ca_file": pki / "ca.pem",
            "mqtt_cert_file": pki / "client.pem",
            "mqtt_key_file": pki / "client.key",
            "mqtt_username": "ingest",
            "mqtt_password": "guess",
        }
        client = build_client(settings_for(broker.url, db, top=top), f"c{run_id}")
        answers: list[Any] = []
        client.on_connect = lambda _c, _u, _f, reason, _p: answers.append(reason)
        host, port = broker.url.removeprefix("mqtts://").split(":")
        client.connect(host, int(port))
        deadline = time.monotonic() + 10
        while not answers and time.monotonic() < deadline:
            client.loop(0.1)
        client.disconnect()
        assert answers and answers[0].is_failure
        assert str(answers[0]) in ("Bad user name or password", "Not authorized")

    def test_a_certificate_file_that_does_not_exist_is_named(
        self, tls_broker: tuple[Broker, Path], db: str, tmp_path: Path
    ) -> None:
        broker, pki = tls_broker
        settings = settings_for(
            broker.url, db, top={"mqtt_ca_file": pki / "ca.pem", "mqtt_cert_file": tmp_path / "nope.pem",
                                 "mqtt_key_file": pki / "client.key"}
        )  # fmt: skip
        with pytest.raises(ConfigError, match="ATMFLEET_MQTT_CERT_FILE: no such file"):
            build_client(settings)

    def test_a_ca_file_on_a_plain_url_is_refused(self, db: str, tmp_path: Path) -> None:
        settings = settings_for("mqtt://127.0.0.1:1883", db, top={"mqtt_ca_file": tmp_path})
        with pytest.raises(ConfigError, match="is not mqtts://"):
            build_client(settings)
