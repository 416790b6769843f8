"""A fork server of the real main job: `python -m sslax.main` without a Python start-up.

`python tests/main_fork_server.py CONFIG` imports `sslax.main` (and with it JAX, orbax,
grain, tensorboardX and every sslax module) once, then for each JSON request
{"workdir": DIR, "config": {FIELD: value}} on stdin forks a child that runs
`absl.app.run(sslax.main.main, argv=[..., --config=CONFIG, --workdir=DIR,
--config.FIELD=value ...])` with its output in DIR/log.txt, prints the child's pid, waits
for it and prints how it ended ({"signal": n or 0, "exit": code or None}) — the protocol of
tests/toy_job.py's server, so `test_sigkill.ForkServer`'s client methods drive it.

Forking is safe only from a single-threaded process that has not started a JAX backend:
the server checks both before its first fork (importing these modules starts no thread;
OPENBLAS_NUM_THREADS=1 keeps OpenBLAS from starting its pool), and every child initialises
its own backend. Each child parses the flags afresh: the server never parses them.
"""

import os
import sys
import threading
import traceback

from absl import app
import fork_serve
from jax._src import xla_bridge

from sslax import main


def check_fork_safe() -> None:
  """Raises RuntimeError unless this process has one thread and no JAX backend."""
  threads = len(os.listdir("/proc/self/task"))  # OS threads, those of C libraries included
  if threading.active_count() != 1 or threads != 1:
    raise RuntimeError(
      f"cannot fork safely: {threading.active_count()} Python threads, {threads} OS threads"
    )
  if xla_bridge.backends_are_initialized():
    raise RuntimeError("cannot fork safely: a JAX backend is initialised")


def serve(config: str) -> None:
  check_fork_safe()
  fork_serve.serve(lambda request: _child(config, request), before_fork=check_fork_safe)


def _child(config: str, request: dict) -> None:
  code = 1
  try:
    fork_serve.log_to_workdir(request["workdir"])
    argv = [
      "sslax.main",
      f"--config={config}",
      f"--workdir={request['workdir']}",
      *(f"--config.{name}={value}" for name, value in request["config"].items()),
    ]
    sys.argv = argv  # config_flags finds the --config.FIELD overrides in sys.argv
    try:
      app.run(main.main, argv=argv)
    except SystemExit as done:  # app.run ends with sys.exit
      code = done.code or 0
    else:
      code = 0
  except BaseException:  # noqa: B036  anything: report it in the log, never return
    traceback.print_exc()
  finally:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 1)


if __name__ == "__main__":
  if len(sys.argv) != 2:
    raise SystemExit("usage: python tests/main_fork_server.py CONFIG")
  serve(sys.argv[1])
