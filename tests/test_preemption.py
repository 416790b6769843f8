"""SIGTERM to one host of a two-process run: both stop at the same step with a checkpoint,
exit 0, and rerunning the command continues exactly where they stopped."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 30


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def two_process_command(workdir, data_dir):
  return [
    "bash",
    "launch/local.sh",
    "2",
    "2",
    "--config=configs/demo.py:tiny",
    f"--workdir={workdir}",
    f"--config.data.data_dir={data_dir}",
    f"--config.total_steps={STEPS}",
    "--config.checkpoint_every=1000",
  ]


def two_process_env():
  env = dict(os.environ, SSLAX_COORDINATOR_PORT=str(free_port()), PYTHON=sys.executable)
  env.pop("XLA_FLAGS")  # launch/local.sh gives each process its own devices
  return env


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_sigterm_to_one_process_stops_all_at_one_checkpoint(tmp_path, demo_data_dir):
  workdir = str(tmp_path / "preempted")
  launcher = subprocess.Popen(
    two_process_command(workdir, demo_data_dir),
    cwd=REPO,
    env=two_process_env(),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 300
  while not (os.path.exists(metrics_path) and len(open(metrics_path).readlines()) >= 3):
    assert launcher.poll() is None and time.time() < deadline, "the run ended before SIGTERM"
    time.sleep(0.05)
  # Only the second host is told (as when one VM of a pod is preempted).
  second = subprocess.run(
    ["pgrep", "-f", f"workdir={workdir} .*--process_id=1"], capture_output=True, text=True
  ).stdout.split()
  assert len(second) == 1
  os.kill(int(second[0]), signal.SIGTERM)
  _, stderr = launcher.communicate(timeout=300)
  assert launcher.returncode == 0, stderr[-5000:]

  stops = re.findall(r"preempted: checkpoint (\d+) written", stderr)
  assert len(stops) == 2 and stops[0] == stops[1], stops  # both processes, same step
  stopped_at = int(stops[0])
  assert stopped_at < STEPS
  assert os.path.isdir(os.path.join(workdir, "checkpoints", str(stopped_at)))
  assert [m["step"] for m in read_metrics(workdir)] == list(range(1, stopped_at + 1))

  # Rerunning the same command resumes and ends as an uninterrupted run does.
  result = subprocess.run(
    two_process_command(workdir, demo_data_dir),
    cwd=REPO,
    env=two_process_env(),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-5000:]
  assert f"resumed from checkpoint {stopped_at}" in result.stderr
  reference_dir = str(tmp_path / "reference")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  subprocess.run(
    [
      sys.executable,
      "-m",
      "sslax.main",
      "--config=configs/demo.py:tiny",
      f"--workdir={reference_dir}",
      f"--config.data.data_dir={demo_data_dir}",
      f"--config.total_steps={STEPS}",
      "--config.checkpoint_every=1000",
    ],
    cwd=REPO,
    env=env,
    check=True,
    capture_output=True,
  )
  resumed, reference = read_metrics(workdir), read_metrics(reference_dir)
  assert [m["step"] for m in resumed] == [m["step"] for m in reference] == list(range(1, 31))
  for a, b in zip(resumed, reference, strict=True):
    assert a["data_position"] == b["data_position"]  # nothing skipped or repeated
    # Same global batches and mesh shape; cross-process reductions may add in another order.
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
