"""The main job end to end, as a user runs it: a subprocess on the tiny demo config."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main_command(workdir, data_dir, *overrides):
  return [
    sys.executable,
    "-m",
    "sslax.main",
    "--config=configs/demo.py:tiny",
    f"--workdir={workdir}",
    f"--config.data.data_dir={data_dir}",
    *overrides,
  ]


def run_main(workdir, data_dir, *overrides, check=True):
  result = subprocess.run(
    main_command(workdir, data_dir, *overrides),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  if check and result.returncode != 0:
    raise AssertionError(f"sslax.main failed:\n{result.stderr[-5000:]}")
  return result


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_main_writes_workdir_and_resumes(tmp_path, demo_data_dir):
  workdir = str(tmp_path / "run")
  result = run_main(workdir, demo_data_dir, "--config.total_steps=4")
  assert "step 4/4" in result.stderr  # the progress line
  config = json.load(open(os.path.join(workdir, "config.json")))
  assert config["total_steps"] == 4 and config["model"]["embed_dim"] == 32
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "4"))
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir))
  metrics = read_metrics(workdir)
  assert [m["step"] for m in metrics] == [1, 2, 3, 4]
  for m in metrics:
    assert np.isfinite(m["loss"]) and 0 <= m["accuracy"] <= 1 and m["prob_perplexity"] > 1
    assert m["audio_seconds_per_second"] > 0

  # The same command with more steps continues from step 4 instead of starting over.
  result = run_main(workdir, demo_data_dir, "--config.total_steps=6")
  assert "resumed from checkpoint 4" in result.stderr
  assert [m["step"] for m in read_metrics(workdir)] == [1, 2, 3, 4, 5, 6]


def test_unknown_config_field_is_a_clear_error(tmp_path, demo_data_dir):
  result = run_main(str(tmp_path), demo_data_dir, "--config.totl_steps=3", check=False)
  assert result.returncode != 0
  assert "totl_steps" in result.stderr


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path, demo_data_dir):
  steps = ["--config.total_steps=12", "--config.checkpoint_every=3"]
  reference_dir = str(tmp_path / "reference")
  run_main(reference_dir, demo_data_dir, *steps)
  reference = {m["step"]: m for m in read_metrics(reference_dir)}

  workdir = str(tmp_path / "killed")
  process = subprocess.Popen(
    main_command(workdir, demo_data_dir, *steps),
    cwd=REPO,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  # Kill it (no clean exit) once it is past the checkpoint at step 6.
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 300
  while time.time() < deadline:
    if os.path.exists(metrics_path) and len(open(metrics_path).readlines()) >= 7:
      break
    assert process.poll() is None, "the run ended before it could be killed"
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  killed_at = len(read_metrics(workdir))
  assert 7 <= killed_at < 12

  result = run_main(workdir, demo_data_dir, *steps)
  assert "resumed from checkpoint" in result.stderr
  resumed = read_metrics(workdir)
  assert [m["step"] for m in resumed] == list(range(1, 13))
  for m in resumed:
    ref = reference[m["step"]]
    # Same program, same inputs, same device: results are bitwise reproducible.
    assert m["loss"] == ref["loss"], (m["step"], m["loss"], ref["loss"])
    assert m["accuracy"] == ref["accuracy"]
    assert m["data_position"] == ref["data_position"]  # nothing skipped or repeated


def test_non_finite_loss_stops_naming_step_and_checkpoint(tmp_path, demo_data_dir):
  # Adam moves every parameter by about the learning rate: 1e30 overflows the forward pass.
  result = run_main(str(tmp_path), demo_data_dir, "--config.optim.learning_rate=1e30", check=False)
  assert result.returncode != 0
  assert re.search(
    r"FloatingPointError: loss is (nan|inf) at step \d+; the last good checkpoint: "
    r"none was written yet",
    result.stderr,
  )
