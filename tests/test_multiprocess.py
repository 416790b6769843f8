"""Processes joined by jax.distributed on 127.0.0.1 run the main job as one.

Four processes of 2 fake CPU devices each (launch/local.sh) train the tiny demo config
(with one Transformer block and a 3-layer feature encoder, tests/tiny_steps.py) on one
8-device mesh with the parameters sharded over all of them (`fsdp` = 8): each process
reads its own rows of every global batch and writes its own shards of every checkpoint.
SIGTERM to one of them stops all four at one checkpointed step, which two processes with
another mesh resume, and this single process restores onto a third mesh; the losses are
those of one process with all 8 devices.

Compiling dominates these runs on a CPU, hence the smaller model, and every run compiles
fast (tests/xla_flags.py's FAST_COMPILE, added through launch/local.sh's PYTHON: same
program semantics; all runs compared here use it). (JAX_SHARE_BINARY_BETWEEN_HOSTS, one
process compiling for all, timed out the other processes' first cross-process collective
on a loaded 2-core machine.)
"""

import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import tiny_steps
import xla_flags

from configs import demo
from sslax.core import checkpoints, sharding
from sslax.data import pretraining_stream
from sslax.train import wav2vec2_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 16
MESH = ["--config.mesh.data=1", "--config.mesh.fsdp=8"]
# Same mesh shape as the reference, other processes: cross-process reductions may add in
# another order (float32).
SAME_MESH_RTOL = 1e-5
# After a restore onto another mesh shape, reductions split differently, and the float32
# differences compound over the remaining Adam updates.
OTHER_MESH_RTOL = 1e-4
MIXTURE = (("sslax_demo_corpus", "train"), ("sslax_demo_corpus", "dev"))
MIXTURE_FLAG = f"--config.data.mixture={MIXTURE}"


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def main_flags(workdir, data_dir, *overrides):
  return [
    "--config=configs/demo.py:tiny",
    f"--workdir={workdir}",
    f"--config.data.data_dir={data_dir}",
    f"--config.total_steps={STEPS}",
    "--config.checkpoint_every=1000",
    *tiny_steps.FEWER_LAYERS_FLAGS,
    *overrides,
  ]


def local_launch(tmp_path, processes, devices, flags, **popen):
  """launch/local.sh with an interpreter wrapper that adds xla_flags.FAST_COMPILE."""
  python = tmp_path / "python_fast_compile"
  python.write_text(
    f'#!/bin/sh\nXLA_FLAGS="$XLA_FLAGS {xla_flags.FAST_COMPILE}" exec {sys.executable} "$@"\n'
  )
  python.chmod(0o755)
  env = dict(os.environ, SSLAX_COORDINATOR_PORT=str(free_port()), PYTHON=str(python))
  env.pop("XLA_FLAGS")  # launch/local.sh gives each process its own devices
  command = ["bash", "launch/local.sh", str(processes), str(devices), *flags]
  return subprocess.Popen(command, cwd=REPO, env=env, text=True, **popen)


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_processes_read_disjoint_rows_that_make_the_global_batch(demo_data_dir):
  config = demo.get_config("tiny")
  data = config.data.copy_and_resolve_references()
  data.data_dir = demo_data_dir

  def stream(index, count):
    frames = wav2vec2_step.frames_fn(config)
    return pretraining_stream.PretrainingStream(
      data, config.masking, frames, seed=0, process_index=index, process_count=count
    )

  whole, parts = stream(0, 1), [stream(i, 4) for i in range(4)]
  for k in (0, 1):
    rows = [part.schedule.batch_indices(k)[part.schedule.host_rows(k)] for part in parts]
    assert all(len(r) == 2 for r in rows)
    assert len(set(np.concatenate(rows))) == 8  # no example read twice
    np.testing.assert_array_equal(np.concatenate(rows), whole.schedule.batch_indices(k))
    batches = [part.host_batch(k) for part in parts]
    for name, value in whole.host_batch(k).items():
      np.testing.assert_array_equal(np.concatenate([b[name] for b in batches]), value)


def test_mixture_processes_read_disjoint_rows_that_make_the_global_batch(demo_data_dir):
  """A two-source mixture (train and dev of the demo corpus) read by 2 processes: each
  reads its own half of every global batch's rows, and the halves are the 1-process batch."""
  config = demo.get_config("tiny")
  data = config.data.copy_and_resolve_references()
  data.data_dir, data.mixture = demo_data_dir, MIXTURE

  def stream(index, count):
    frames = wav2vec2_step.frames_fn(config)
    return pretraining_stream.PretrainingStream(
      data, config.masking, frames, seed=0, process_index=index, process_count=count
    )

  whole, parts = stream(0, 1), [stream(i, 2) for i in range(2)]
  sources_read = [set(), set()]  # per process
  for k in range(4):
    rows = whole.schedule.batch_rows(k)
    positions = [p.schedule.batch_rows(k).positions[p.schedule.host_rows(k)] for p in parts]
    examples = [p.schedule.batch_indices(k)[p.schedule.host_rows(k)] for p in parts]
    assert [len(p) for p in positions] == [4, 4] and not set(positions[0]) & set(positions[1])
    np.testing.assert_array_equal(np.concatenate(positions), rows.positions)
    np.testing.assert_array_equal(np.concatenate(examples), rows.examples)
    for read, e in zip(sources_read, examples, strict=True):
      read.update(whole.schedule.source_of(int(i)) for i in e)
    batches = [part.host_batch(k) for part in parts]
    for name, value in whole.host_batch(k).items():
      assert all(len(b[name]) == 4 for b in batches), name
      np.testing.assert_array_equal(np.concatenate([b[name] for b in batches]), value)
  assert sources_read == [{0, 1}, {0, 1}]  # each process read rows of both sources


@pytest.mark.slow
def test_two_processes_from_scratch_train_as_one_on_a_mixture(tmp_path, demo_data_dir):
  """`python -m sslax.main` twice, joined on 127.0.0.1 (4 devices each), trains as one
  process with 8 devices on the same mesh (data = 8): the same data positions, and losses
  and parameters equal to within float32 reduction order. Not bitwise: XLA's CPU
  all-reduce adds the 8 devices' partial sums in another order when they span processes
  (measured over these 16 steps: 7 losses differ, by at most 1.9e-7 relative, and 31 of 38
  parameter arrays, by at most 1.2e-7). The data is a two-source mixture, so this is also
  the real run of the mixture's split of rows across processes."""
  flags = [MIXTURE_FLAG]
  workdir, reference_dir = str(tmp_path / "two"), str(tmp_path / "one")
  # Both at once: the three processes compile side by side.
  launcher = local_launch(
    tmp_path,
    2,
    4,
    main_flags(workdir, demo_data_dir, *flags),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
  )
  env = dict(os.environ, XLA_FLAGS=xla_flags.cpu_devices(8))
  reference_log = tmp_path / "one.log"  # a file: nobody reads a pipe while we wait on two
  with open(reference_log, "w") as log:
    reference = subprocess.Popen(
      [sys.executable, "-m", "sslax.main", *main_flags(reference_dir, demo_data_dir, *flags)],
      cwd=REPO,
      env=env,
      stdout=subprocess.DEVNULL,
      stderr=log,
    )
  _, stderr = launcher.communicate(timeout=500)
  assert launcher.returncode == 0, stderr[-5000:]
  assert "over 2 processes" in stderr and "'data': 8" in stderr
  assert "mixture source sslax_demo_corpus:dev" in stderr
  reference.wait(timeout=500)
  reference_stderr = reference_log.read_text()
  assert reference.returncode == 0, reference_stderr[-5000:]
  assert "over 1 processes" in reference_stderr and "'data': 8" in reference_stderr

  two, one = read_metrics(workdir), read_metrics(reference_dir)
  assert [m["step"] for m in two] == [m["step"] for m in one] == list(range(1, STEPS + 1))
  for a, b in zip(two, one, strict=True):
    assert a["data_position"] == b["data_position"] == a["step"]  # nothing skipped or repeated
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=SAME_MESH_RTOL, err_msg=f"{a['step']}")
  # Measured 1.9e-7 at most; a wrong row moves the loss by 1e-2 (with 2 blocks and 7 conv
  # layers, every process reading the global batch's first rows failed step 1 by 1.4%).
  jax.tree.map(
    functools.partial(np.testing.assert_allclose, rtol=SAME_MESH_RTOL, atol=1e-6),
    checkpoints.load_params(workdir),
    checkpoints.load_params(reference_dir),
  )


def test_four_processes_train_as_one_stop_together_and_resume_on_another_mesh(
  tmp_path, demo_data_dir
):
  # ---- Four processes, stopped by SIGTERM to one of them ------------------------------
  workdir = str(tmp_path / "run")
  launcher = local_launch(
    tmp_path,
    4,
    2,
    main_flags(workdir, demo_data_dir, *MESH),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
  )
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 400
  while not (os.path.exists(metrics_path) and len(open(metrics_path).readlines()) >= 2):
    assert launcher.poll() is None and time.time() < deadline, "the run ended before SIGTERM"
    time.sleep(0.05)
  # Only one host is told (as when one VM of a pod is preempted).
  second = subprocess.run(
    ["pgrep", "-f", f"workdir={workdir} .*--process_id=1"], capture_output=True, text=True
  ).stdout.split()
  assert len(second) == 1
  os.kill(int(second[0]), signal.SIGTERM)
  _, stderr = launcher.communicate(timeout=400)
  assert launcher.returncode == 0, stderr[-5000:]
  assert "over 4 processes" in stderr and "'fsdp': 8" in stderr
  stops = re.findall(r"preempted: checkpoint (\d+) written", stderr)
  assert len(stops) == 4 and len(set(stops)) == 1, stops  # every process, one step
  stopped_at = int(stops[0])
  assert 2 <= stopped_at < STEPS
  assert [m["step"] for m in read_metrics(workdir)] == list(range(1, stopped_at + 1))
  checkpoint = os.path.join(workdir, "checkpoints", str(stopped_at))
  with open(os.path.join(checkpoint, "data", "metadata")) as f:
    # Global batches consumed, one count for all processes.
    assert json.load(f) == {"position": stopped_at, "consecutive_skips": 0}
  # Each process wrote its own shards of the fsdp-sharded state.
  written = sorted(
    name
    for name in os.listdir(os.path.join(checkpoint, "state"))
    if name.startswith("ocdbt.process_")
  )
  assert written == [f"ocdbt.process_{i}" for i in range(4)], written

  # ---- This process (8 devices) restores it onto a third mesh shape --------------------
  config = tiny_steps.fewer_layers(demo.get_config("tiny"))
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  trainer = wav2vec2_step.build_trainer(config, mesh)
  checkpointer = checkpoints.Checkpointer(workdir, keep=2)
  state, data_state = checkpointer.restore(
    stopped_at, trainer.abstract_state, trainer.state_shardings
  )
  checkpointer.close()
  assert data_state["position"] == stopped_at and int(state.step) == stopped_at
  kernel = state.params["encoder"]["layers_0"]["fc1"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  jax.tree.map(
    np.testing.assert_array_equal,
    jax.device_get(state.params),
    checkpoints.load_params(workdir, stopped_at),
  )

  # ---- Two processes with another mesh resume it ---------------------------------------
  resumed = local_launch(
    tmp_path,
    2,
    4,
    main_flags(workdir, demo_data_dir, "--config.mesh.data=2", "--config.mesh.fsdp=4"),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
  )
  _, stderr = resumed.communicate(timeout=400)
  assert resumed.returncode == 0, stderr[-5000:]
  assert f"resumed from checkpoint {stopped_at}" in stderr
  assert "'data': 2, 'fsdp': 4" in stderr

  # ---- One process with all 8 devices, uninterrupted ---------------------------------
  reference_dir = str(tmp_path / "reference")
  env = dict(os.environ, XLA_FLAGS=xla_flags.cpu_devices(8))
  subprocess.run(
    [sys.executable, "-m", "sslax.main", *main_flags(reference_dir, demo_data_dir, *MESH)],
    cwd=REPO,
    env=env,
    check=True,
    capture_output=True,
  )
  mixed, reference = read_metrics(workdir), read_metrics(reference_dir)
  assert [m["step"] for m in mixed] == [m["step"] for m in reference] == list(range(1, STEPS + 1))
  for a, b in zip(mixed, reference, strict=True):
    assert a["data_position"] == b["data_position"]  # nothing skipped or repeated
    rtol = SAME_MESH_RTOL if a["step"] <= stopped_at else OTHER_MESH_RTOL
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=rtol, err_msg=f"step {a['step']}")
