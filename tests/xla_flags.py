"""XLA_FLAGS for the tests and the processes they start.

The tests check numbers, not speed: LLVM's optimisation level 0 halves the compile time
that dominates the suite (tiny models), with every result within its test's tolerance.
"""

FAST_COMPILE = "--xla_backend_optimization_level=0"


def cpu_devices(count: int) -> str:
  """XLA_FLAGS for `count` fake CPU devices, compiled fast."""
  return f"--xla_force_host_platform_device_count={count} {FAST_COMPILE}"
