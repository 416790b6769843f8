"""The request loop of the tests' fork servers (tests/toy_job.py, tests/main_fork_server.py).

A server process pays for its imports once; each request (one JSON line on stdin) runs in a
forked child, so a test can SIGKILL a run without paying a fresh interpreter per run. For
each request the server prints the child's pid, then, once the child ends, a JSON line
{"signal": N or 0, "exit": status or null}.
"""

from collections.abc import Callable
import json
import os
import sys


def serve(child: Callable[[dict], None], before_fork: Callable[[], None] = lambda: None) -> None:
  """Runs `child(request)` in a forked process per stdin line; `child` must not return
  (it ends with os._exit). `before_fork` runs before each fork (e.g. a fork-safety check)."""
  for line in sys.stdin:
    request = json.loads(line)
    before_fork()
    pid = os.fork()
    if pid == 0:
      child(request)
    print(pid, flush=True)
    _, status = os.waitpid(pid, 0)
    print(
      json.dumps(
        {
          "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0,
          "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        }
      ),
      flush=True,
    )


def log_to_workdir(workdir: str) -> None:
  """Sends this (child) process's stdout and stderr to WORKDIR/log.txt, appending."""
  os.makedirs(workdir, exist_ok=True)
  log = os.open(os.path.join(workdir, "log.txt"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
  os.dup2(log, 1)
  os.dup2(log, 2)
