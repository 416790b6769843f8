"""The main job end to end, as a user runs it: a subprocess on the tiny demo config, with
one Transformer block and a 3-layer feature encoder (tests/tiny_steps.py): every run here
compiles programs of its own (its schedule, its device count), and the job's behaviour,
not the model's, is what is tested."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tiny_steps
import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main_command(workdir, data_dir, *overrides, config="configs/demo.py:tiny", tensorflow=True):
  """`python -m sslax.main ...`; without `tensorflow`, as on a machine that lacks it."""
  return [
    sys.executable,
    *(["-m"] if tensorflow else [os.path.join(REPO, "tests", "without_tensorflow.py")]),
    "sslax.main",
    f"--config={config}",
    f"--workdir={workdir}",
    f"--config.data.data_dir={data_dir}",
    *tiny_steps.FEWER_LAYERS_FLAGS,
    *overrides,
  ]


def run_main(workdir, data_dir, *overrides, check=True, tensorflow=True):
  result = subprocess.run(
    main_command(workdir, data_dir, *overrides, tensorflow=tensorflow),
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
  assert "writing final checkpoint at step 4" in result.stderr
  assert "Unable to initialize backend" not in result.stderr  # JAX's probe for a TPU
  config = json.load(open(os.path.join(workdir, "config.json")))
  assert config["total_steps"] == 4 and config["model"]["embed_dim"] == 32
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "4"))
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir))
  metrics = read_metrics(workdir)
  assert [m["step"] for m in metrics] == [1, 2, 3, 4]
  for m in metrics:
    assert np.isfinite(m["loss"]) and 0 <= m["accuracy"] <= 1 and m["prob_perplexity"] > 1
    assert m["audio_seconds_per_second"] > 0

  # The same command with more steps continues from step 4 instead of starting over, on a
  # machine without TensorFlow too (the data is prepared).
  result = run_main(workdir, demo_data_dir, "--config.total_steps=6", tensorflow=False)
  assert "resumed from checkpoint 4" in result.stderr
  assert "Metadata file does not exist" not in result.stderr  # orbax, on every restore
  assert [m["step"] for m in read_metrics(workdir)] == [1, 2, 3, 4, 5, 6]


def test_unknown_config_field_is_a_clear_error(tmp_path, demo_data_dir):
  result = run_main(str(tmp_path), demo_data_dir, "--config.totl_steps=3", check=False)
  assert result.returncode != 0
  assert "totl_steps" in result.stderr


# What a failed run must not print: an abort at interpreter shutdown.
_ABORTS = ("Fatal Python error", "terminate called", "Aborted", "core dumped")


@pytest.mark.parametrize(
  "config, schedule, attempts",
  [
    ("configs/demo.py:tiny", ["--config.optim.warmup_steps=1"], 3),
    ("configs/demo_ctc.py:tiny", [], 1),  # tri-stage: the learning rate rises from step 1
  ],
)
def test_a_run_stopped_by_an_error_exits_at_once_with_its_error(
  config, schedule, attempts, tmp_path, demo_data_dir
):
  """A run that stops on a non-finite loss after its first batches, with reads in flight,
  prints its error last and exits with status 1 (pretraining three times in a row). Under
  tf.data such runs hung or aborted at interpreter shutdown (tensorflow/tensorflow#21277):
  3 of 3 pretraining runs did before sslax read through grain."""
  env = dict(
    os.environ,
    XLA_FLAGS=xla_flags.cpu_devices(1),  # one CPU device, as a user's machine has
    JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),  # compiled once, read twice
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
  )
  # Adam moves every parameter by about the learning rate: 1e30 overflows the forward pass.
  overrides = ["--config.optim.learning_rate=1e30", "--config.total_steps=40", *schedule]
  for attempt in range(attempts):
    result = subprocess.run(
      main_command(str(tmp_path / f"run{attempt}"), demo_data_dir, *overrides, config=config),
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,  # a hang fails here
      env=env,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert not any(abort in result.stderr for abort in _ABORTS), result.stderr[-3000:]
    last = result.stderr.rstrip().splitlines()[-1]
    assert re.fullmatch(
      r"FloatingPointError: loss is \S+ at step \d+; the last good checkpoint: (none|step).*",
      last,
    ), last


def test_sigterm_stops_the_run_at_a_checkpoint_and_exits_with_status_0(tmp_path, demo_data_dir):
  workdir = str(tmp_path / "run")
  process = subprocess.Popen(
    main_command(workdir, demo_data_dir, "--config.total_steps=100000"),
    cwd=REPO,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 300
  while not (os.path.exists(metrics_path) and open(metrics_path).read()):
    assert time.time() < deadline and process.poll() is None, "the run made no progress"
    time.sleep(0.05)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == 0, stderr[-3000:]
  match = re.search(r"preempted: checkpoint (\d+) written; run the same command again", stderr)
  assert match, stderr[-3000:]
  assert os.listdir(os.path.join(workdir, "checkpoints")) == [match[1]]
  assert not any(abort in stderr for abort in _ABORTS)
