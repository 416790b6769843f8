"""The cluster launch scripts, run against stand-ins for `gcloud` and `srun`.

The TPU script is driven by a fake `gcloud` that records every call, so the test checks
what a user's pod would be asked to do. The SLURM script runs for real: a fake `srun`
starts the tasks on this machine with SLURM's rank variables, and the processes find each
other through jax.distributed's SLURM detection on localhost, as on a cluster.
"""

import os
import random
import shlex
import socket
import stat
import subprocess
import sys

import tiny_steps
import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FAKE_GCLOUD = r"""#!/usr/bin/env bash
# Records each call; answers `describe` as if nothing exists yet, except the fields asked for.
printf '%s\n' "$*" >> "$GCLOUD_LOG"
case "$*" in
  *"describe"*"--format=value(state.state)"*) echo ACTIVE ;;
  *"describe"*"--format=value(networkEndpoints[0].ipAddress)"*) echo 10.0.0.2 ;;
  *"describe"*) exit 1 ;;
esac
"""

FAKE_SRUN = r"""#!/usr/bin/env bash
# srun on one machine: SLURM_NTASKS copies of the command with SLURM's rank variables.
[ "$1" = "--kill-on-bad-exit=1" ] || { echo "srun: expected --kill-on-bad-exit=1" >&2; exit 2; }
shift
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$i "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit "$status"
"""


def write_executable(path, text):
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IXUSR)


def run_tpu_pod(tmp_path, *args):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  write_executable(bin_dir / "gcloud", FAKE_GCLOUD)
  log = tmp_path / "gcloud.log"
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", GCLOUD_LOG=str(log))
  result = subprocess.run(
    ["bash", "launch/tpu_pod.sh", *args], cwd=REPO, env=env, capture_output=True, text=True
  )
  assert result.returncode == 0, result.stderr
  return log.read_text().splitlines()


def test_tpu_pod_creates_installs_and_runs_on_every_worker(tmp_path):
  sslax_args = ["--config=configs/w2v_large.py", "--workdir=gs://b/runs/large phase 1"]
  calls = run_tpu_pod(tmp_path, "pod", "us-east5-a", "v5p-256", "1", "--", *sslax_args)

  create = [c for c in calls if "tpu-vm create" in c]
  assert create == [
    "compute tpus tpu-vm create pod --zone=us-east5-a --accelerator-type=v5p-256 "
    "--version=v2-alpha-tpuv5"
  ]
  assert any("tpu-vm scp" in c and "--worker=all" in c for c in calls)
  runs = [c for c in calls if "sslax.main" in c]
  assert len(runs) == 1 and "--worker=all" in runs[0]
  command = runs[0].split("--command=", 1)[1]
  # The workers' shell gets back exactly the arguments given, spaces included.
  assert shlex.split(command)[-3:] == ["--distributed", *sslax_args]
  assert "MEGASCALE" not in command


def test_tpu_multislice_joins_slices_over_dcn(tmp_path):
  calls = run_tpu_pod(
    tmp_path, "xl", "us-west4-a", "v5litepod-256", "2", "--", "--config=configs/w2v_large.py"
  )
  assert any(
    "queued-resources create xl" in c and "--node-count=2" in c and "--node-prefix=xl" in c
    for c in calls
  )
  runs = {c.split()[4]: c for c in calls if "sslax.main" in c}  # slice name -> call
  assert sorted(runs) == ["xl-0", "xl-1"]
  for i, slice_name in enumerate(sorted(runs)):
    command = runs[slice_name]
    assert "--worker=all" in command
    assert "MEGASCALE_COORDINATOR_ADDRESS=10.0.0.2:8080" in command
    assert f"MEGASCALE_SLICE_ID={i}" in command and "MEGASCALE_NUM_SLICES=2" in command


def test_tpu_pod_usage_error(tmp_path):
  result = subprocess.run(
    ["bash", "launch/tpu_pod.sh", "pod", "zone"], cwd=REPO, capture_output=True, text=True
  )
  assert result.returncode == 2 and "usage:" in result.stderr


def slurm_job_id() -> int:
  """A job id whose coordinator port (JAX: 61440 + id % 4096) is free here."""
  while True:
    job_id = random.randrange(10**6)
    with socket.socket() as s:
      try:
        s.bind(("127.0.0.1", 61440 + job_id % 4096))
        return job_id
      except OSError:
        continue


def test_slurm_script_runs_one_job_across_tasks(tmp_path, demo_data_dir):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  write_executable(bin_dir / "srun", FAKE_SRUN)
  workdir = tmp_path / "run"
  env = dict(
    os.environ,
    PATH=f"{bin_dir}:{os.environ['PATH']}",
    PYTHON=sys.executable,
    SSLAX_DIR=REPO,
    SLURM_JOB_ID=str(slurm_job_id()),
    SLURM_STEP_NODELIST="localhost",
    SLURM_NTASKS="2",
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=xla_flags.cpu_devices(2),
  )
  result = subprocess.run(
    [
      "bash",
      os.path.join(REPO, "launch", "slurm.sbatch"),
      "--config=configs/demo.py:tiny",
      f"--workdir={workdir}",
      f"--config.data.data_dir={demo_data_dir}",
      "--config.total_steps=2",
      # Two processes compile programs of their own: the smaller model compiles faster.
      *tiny_steps.FEWER_LAYERS_FLAGS,
    ],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-5000:]
  assert "process 0/2" in result.stderr and "process 1/2" in result.stderr
  assert "'data': 4" in result.stderr  # one mesh over both tasks' devices
  assert (workdir / "checkpoints" / "2").is_dir()
