"""XLA_FLAGS for the tests and the processes they start.

The tests check numbers, not speed, and compiling tiny models dominates the suite: LLVM's
optimisation level 0 halves the compile time, and XLA's older elemental emitters instead of
its MLIR fusion emitters (`--xla_cpu_use_fusion_emitters=false`) cut it by another 40 %
(the first sharded wav2vec 2.0 step of tests/test_sharding.py: 5.8 s -> 3.5 s, the whole
suite 15 min 31 s -> 11 min 14 s on 2 cores), with every result within its test's
tolerance.
"""

FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"


def cpu_devices(count: int) -> str:
  """XLA_FLAGS for `count` fake CPU devices, compiled fast."""
  return f"--xla_force_host_platform_device_count={count} {FAST_COMPILE}"


# XLA's own defaults, for the few tests that run one program hundreds of times: there its
# speed outweighs its compile time (tests/test_finetune.py's 300 CTC updates: 47 s -> 22 s alone).
OPTIMIZED = {"xla_backend_optimization_level": 3, "xla_cpu_use_fusion_emitters": True}


def optimized(jitted, *args):
  """`jitted` (a `jax.jit` function) compiled for `args` with OPTIMIZED instead of
  FAST_COMPILE; called like `jitted` on arguments of the same shapes and shardings."""
  return jitted.lower(*args).compile(compiler_options=OPTIMIZED)
