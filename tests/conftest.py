"""Test set-up: eight fake CPU devices, so sharding is tested for real on one host.

XLA reads XLA_FLAGS when the backend starts, so this must run before JAX is imported.
"""

import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


import pytest  # noqa: E402  (after XLA_FLAGS)


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory) -> str:
  """A TFDS data_dir with the demo corpus prepared once per test session."""
  from sslax.data.demo_corpus import builder

  data_dir = str(tmp_path_factory.mktemp("tensorflow_datasets"))
  builder.prepare(data_dir)
  return data_dir
