"""Two processes joined by jax.distributed on 127.0.0.1 run the main job as one.

They compute what one process with the same 8 devices computes, and one process resumes
their checkpoint exactly.

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

import numpy as np

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
    assert json.load(f) == {"position": 4}  # global batches consumed, one for all

  # One process with all 8 devices sees the same global batches, so it computes the same
  # losses; and it resumes the two-process run's checkpoint exactly.
  def single_process(run_dir, steps):
    return subprocess.run(
      [
        sys.executable,
        "-m",
        "sslax.main",
        "--config=configs/demo.py:tiny",
        f"--workdir={run_dir}",
        f"--config.data.data_dir={demo_data_dir}",
        f"--config.total_steps={steps}",
      ],
      cwd=REPO,
      check=True,
      capture_output=True,
      text=True,
    )

  # (Both run 4 steps and then resume to 6: the schedule depends on total_steps.)
  single = str(tmp_path / "single")
  single_process(single, 4)
  single_process(single, 6)
  assert "resumed from checkpoint 4" in single_process(workdir, 6).stderr
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    mixed = [json.loads(line) for line in f]  # steps 1-4 on 2 processes, 5-6 on 1
  with open(os.path.join(single, "metrics.jsonl")) as f:
    one = [json.loads(line) for line in f]
  assert [m["step"] for m in mixed] == [m["step"] for m in one] == [1, 2, 3, 4, 5, 6]
  for a, b in zip(mixed, one, strict=True):
    # Same mesh shape, same program; cross-process reductions may add in another order.
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    assert a["data_position"] == b["data_position"]
