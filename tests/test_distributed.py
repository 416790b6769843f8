"""Multi-host start-up failures stop with a message that says what to change."""

import os
import socket
import subprocess
import sys

import pytest

from sslax.train import distributed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def unused_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_unreachable_coordinator_is_named():
  address = f"127.0.0.1:{unused_port()}"
  with pytest.raises(ConnectionError, match=f"cannot reach the coordinator at {address}"):
    distributed.wait_for_coordinator(address, timeout_s=1)


def test_reachable_coordinator_returns():
  with socket.socket() as server:
    server.bind(("127.0.0.1", 0))
    server.listen()
    distributed.wait_for_coordinator(f"127.0.0.1:{server.getsockname()[1]}", timeout_s=5)


def test_busy_coordinator_port_is_named():
  with socket.socket() as server:
    server.bind(("", 0))
    server.listen()
    port = server.getsockname()[1]
    with pytest.raises(ConnectionError, match=f"cannot listen on port {port}"):
      distributed.check_port_free(f"127.0.0.1:{port}")


def test_bad_address_is_named():
  with pytest.raises(ValueError, match="expected HOST:PORT"):
    distributed.wait_for_coordinator("localhost", timeout_s=1)


def test_main_reports_an_unreachable_coordinator(tmp_path):
  address = f"127.0.0.1:{unused_port()}"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "sslax.main",
      "--config=configs/demo.py:tiny",
      f"--workdir={tmp_path}",
      f"--coordinator_address={address}",
      "--num_processes=2",
      "--process_id=1",
      "--coordinator_timeout=2",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode != 0
  assert f"cannot reach the coordinator at {address} within 2 s" in result.stderr
