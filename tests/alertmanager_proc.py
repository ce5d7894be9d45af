"""A real Alertmanager (Debian's prometheus-alertmanager) for a test: free port,
clustering off, storage in the test's folder; skipped with the reason when absent."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

BINARIES = ("prometheus-alertmanager", "alertmanager")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def binary(*names: str) -> str:
    found = next((b for b in map(shutil.which, names or BINARIES) if b), None)
    if found is None:
        pytest.skip(
            "Alertmanager is not installed (Debian: apt-get install prometheus-alertmanager)"
        )
    return found


@contextmanager
def running(config: dict[str, Any], folder: Path) -> Iterator[str]:
    """Alertmanager with ``config``, ready; yields its URL and stops it afterwards."""
    exe = binary()
    path = folder / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = folder / "alertmanager.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [exe, f"--config.file={path}", f"--storage.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail(
                        "Alertmanager did not start: "
                        + log_path.read_text(encoding="utf-8")[-2000:]
                    )
                time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
