"""Test set-up: eight fake CPU devices, so sharding is tested for real on one host.

XLA reads XLA_FLAGS when the backend starts, so this must run before JAX is imported.
"""

import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
