"""Two processes joined by jax.distributed on 127.0.0.1 run the main job as one.

Each process has 4 fake CPU devices (XLA_FLAGS set by launch/local.sh), so the mesh spans
8 devices on 2 hosts: global batches are assembled from each process's rows, the step
runs sharded across both, and checkpoints are written by both.
"""

import collections
import json
import os
import re
import socket
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_train_as_one_job(tmp_path, demo_data_dir):
  workdir = str(tmp_path / "run")
  env = dict(os.environ, SSLAX_COORDINATOR_PORT=str(free_port()), PYTHON=sys.executable)
  env.pop("XLA_FLAGS")  # launch/local.sh gives each process its own devices
  result = subprocess.run(
    [
      "bash",
      "launch/local.sh",
      "2",
      "4",
      "--config=configs/demo.py:tiny",
      f"--workdir={workdir}",
      f"--config.data.data_dir={demo_data_dir}",
      "--config.total_steps=4",
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-5000:]
  assert "over 2 processes" in result.stderr
  assert "'data': 8" in result.stderr  # one mesh over both processes' devices
  # Both processes log the same global loss and accuracy for every step.
  logged = collections.defaultdict(list)
  for step, loss, accuracy in re.findall(
    r"step (\d+)/4 \| loss ([\d.]+) \| acc ([\d.]+)", result.stderr
  ):
    logged[int(step)].append((loss, accuracy))
  assert sorted(logged) == [1, 2, 3, 4]
  for values in logged.values():
    assert len(values) == 2 and values[0] == values[1]
  # The primary writes the metrics once; the checkpoint holds both processes' positions.
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    assert [json.loads(line)["step"] for line in f] == [1, 2, 3, 4]
  with open(os.path.join(workdir, "checkpoints", "4", "data", "metadata")) as f:
    positions = [p["position"] for p in json.load(f)["processes"]]
  assert len(positions) == 2 and all(p >= 4 * 4 for p in positions)
