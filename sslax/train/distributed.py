"""Joining the processes of a multi-host job, with errors that say what to change.

`jax.distributed.initialize` aborts the whole process (a C++ fatal error, not a Python
exception) when it cannot reach the coordinator, and reports a busy coordinator port as
an RPC failure. `initialize` checks both first and raises a ConnectionError naming the
address, the flag to change and the likely cause.
"""

from collections.abc import Sequence
import socket
import time

import jax

_POLL_SECONDS = 1.0


def _split_address(address: str) -> tuple[str, int]:
  host, sep, port = address.rpartition(":")
  if not sep or not host or not port.isdigit():
    raise ValueError(f"--coordinator_address={address!r}: expected HOST:PORT")
  return host, int(port)


def wait_for_coordinator(address: str, timeout_s: float) -> None:
  """Returns once something listens at `address`; raises ConnectionError after `timeout_s`."""
  host, port = _split_address(address)
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host, port), timeout=_POLL_SECONDS):
        return
    except OSError as error:
      if time.monotonic() >= deadline:
        raise ConnectionError(
          f"cannot reach the coordinator at {address} within {timeout_s:.0f} s ({error}): "
          "is process 0 running with the same --coordinator_address, and can this host "
          "reach that port? (--coordinator_timeout sets the wait)"
        ) from error
      time.sleep(_POLL_SECONDS)


def check_port_free(address: str) -> None:
  """Raises ConnectionError when process 0 cannot listen on the coordinator port."""
  _, port = _split_address(address)
  with socket.socket() as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
      s.bind(("", port))
    except OSError as error:
      raise ConnectionError(
        f"process 0 cannot listen on port {port} of --coordinator_address={address} "
        f"({error}): another job holds it; choose another port"
      ) from error


def initialize(
  coordinator_address: str | None,
  num_processes: int | None,
  process_id: int | None,
  local_device_ids: Sequence[int] | None,
  timeout_s: float,
) -> None:
  """jax.distributed.initialize, after checking the coordinator when its address is given.

  With no address (`--distributed` on TPU pods or SLURM) JAX finds everything itself.
  """
  if coordinator_address is not None:
    if process_id == 0:
      check_port_free(coordinator_address)
    elif process_id is not None:
      wait_for_coordinator(coordinator_address, timeout_s)
  jax.distributed.initialize(
    coordinator_address=coordinator_address,
    num_processes=num_processes,
    process_id=process_id,
    local_device_ids=local_device_ids,
    initialization_timeout=int(timeout_s),
  )
