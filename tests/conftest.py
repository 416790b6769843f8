"""Test set-up: eight fake CPU devices, so sharding is tested for real on one host.

XLA reads XLA_FLAGS when the backend starts, so this must run before JAX is imported.
"""

import atexit
import fcntl
import os
import shutil
import tempfile

import xla_flags

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + xla_flags.cpu_devices(8)).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One persistent compilation cache for the session and the processes it starts (they
# inherit the environment): the same tiny programs, compiled in-process by one test and in
# a `python -m sslax.main` child by another, are compiled once. Every program is cached,
# however quick to compile.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="sslax-tests-jax-cache-")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# Under pytest-xdist every worker has a core of its own: OpenMP libraries (scikit-learn's
# k-means, torch) would otherwise start a thread per core in each worker and oversubscribe
# the machine (test_kmeans' scikit-learn reference: 4 s alone, 42 s beside another worker).
if os.environ.get("PYTEST_XDIST_WORKER"):
  os.environ.setdefault("OMP_NUM_THREADS", "1")


from collections.abc import Callable  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402  (after XLA_FLAGS)


def pytest_xdist_auto_num_workers(config):
  """`-n auto`: one worker per core, at most one per 6 GiB of memory (a worker holds up to
  about 5 GiB of compiled programs and the processes its tests start)."""
  cores = len(os.sched_getaffinity(0))
  memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
  return max(1, min(cores, int(memory_gib // 6)))


@pytest.fixture(autouse=True)
def no_stream_left_open():
  """Fails a test that leaves an input stream's reader threads running (a `batches()` it
  did not close). Threads of a closed stream end once their read in flight finishes."""
  yield
  deadline = time.monotonic() + 10
  while alive := [t.name for t in threading.enumerate() if t.name.startswith("grain-prefetch")]:
    if time.monotonic() > deadline:
      pytest.fail(f"input-stream threads left running (an unclosed `batches()`): {alive}")
    time.sleep(0.01)


def _made_once(tmp_path_factory, name: str, make: Callable[[str], object]) -> str:
  """The directory `name`, filled by `make(path)` once per test run: pytest-xdist's workers
  share it (their temporary directories are siblings); the first to need it makes it while
  the others wait on its lock."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent
  path, done = root / name, root / f"{name}.done"
  with open(root / f"{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
    if not done.exists():
      shutil.rmtree(path, ignore_errors=True)  # left by a worker that failed making it
      path.mkdir()
      make(str(path))
      done.touch()
  return str(path)


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory) -> str:
  """A TFDS data_dir with the demo corpus prepared once per test run."""
  from sslax.data.demo_corpus import builder

  return _made_once(tmp_path_factory, "tensorflow_datasets", builder.prepare)


@pytest.fixture(scope="session")
def tiny_mfcc_units(tmp_path_factory, demo_data_dir) -> str:
  """`WORKDIR/units` of configs/kmeans_mfcc.py:tiny (dev split, K=8, 100 Hz), run once."""
  from configs import kmeans_mfcc
  from sslax.units import job

  config = kmeans_mfcc.get_config("tiny")
  config.data.data_dir = demo_data_dir
  workdir = _made_once(tmp_path_factory, "tiny_mfcc_units", lambda path: job.run(config, path))
  return f"{workdir}/units"
