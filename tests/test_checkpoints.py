"""Checkpoints carry `TrainState.model_state`, older ones (without it) still restore, and
only large replicated arrays are saved replica-parallel."""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslax.core import checkpoints
from sslax.core import state as state_lib


@flax.struct.dataclass
class StateBeforeModelState:
  """TrainState as checkpoints were written before `model_state` existed."""

  step: jax.Array
  params: Any
  opt_state: Any


def _params():
  return {"dense": {"kernel": jnp.arange(6.0).reshape(2, 3)}}


def _save(workdir, step, state):
  checkpointer = checkpoints.Checkpointer(str(workdir), keep=2)
  checkpointer.save(step, state, {"position": 7})
  checkpointer.wait()
  checkpointer.close()


def _restore(workdir, step, like):
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), like)
  checkpointer = checkpoints.Checkpointer(str(workdir), keep=2)
  restored = checkpointer.restore(step, abstract, jax.tree.map(lambda _: device, like))
  checkpointer.close()
  return restored


def test_model_state_round_trips(tmp_path):
  state = state_lib.TrainState(
    step=jnp.int32(3),
    params=_params(),
    opt_state=({"dense": {"kernel": jnp.ones((2, 3))}},),
    model_state={"batch_stats": {"mean": jnp.full((4,), 0.25)}, "frozen": {"w": jnp.eye(2)}},
  )
  _save(tmp_path, 3, state)
  zeros = jax.tree.map(jnp.zeros_like, state)
  restored, data = _restore(tmp_path, 3, zeros)
  assert data == {"position": 7}
  jax.tree.map(np.testing.assert_array_equal, restored, state)
  assert set(restored.model_state) == {"batch_stats", "frozen"}


def test_checkpoint_without_model_state_restores_with_it_empty(tmp_path):
  old = StateBeforeModelState(step=jnp.int32(5), params=_params(), opt_state=(jnp.zeros(()),))
  _save(tmp_path, 5, old)
  like = state_lib.TrainState(step=jnp.int32(0), params=_params(), opt_state=(jnp.ones(()),))
  assert like.model_state == {}  # the field is optional: old constructors keep working
  restored, _ = _restore(tmp_path, 5, like)
  assert isinstance(restored, state_lib.TrainState) and restored.model_state == {}
  assert int(restored.step) == 5 and float(restored.opt_state[0]) == 0.0
  # A model that needs model_state cannot start from such a checkpoint silently.
  needs_stats = like.replace(model_state={"batch_stats": {"mean": jnp.zeros(4)}})
  with pytest.raises(ValueError, match="holds no model_state"):
    _restore(tmp_path, 5, needs_stats)


def _programs_lowered_while(fn) -> int:
  """How many XLA programs JAX lowered while `fn()` ran."""
  lowered = []

  def listener(event, duration_secs, **kwargs):
    if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
      lowered.append(duration_secs)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    fn()
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  return len(lowered)


def test_only_large_replicated_arrays_are_saved_replica_parallel(tmp_path):
  """Orbax cuts an array replicated over 8 devices into 8 slices, one program each, so
  that each replica writes one; arrays with slices under 1 MiB are written whole by one
  replica instead (no program). Both restore the same."""
  replicated = jax.sharding.NamedSharding(
    jax.sharding.Mesh(np.array(jax.devices()), ("data",)), jax.sharding.PartitionSpec()
  )
  assert len(replicated.device_set) == 8
  # Shapes no other test slices (programs are cached per process).
  small = {f"bias{i}": jnp.arange(8.0 * (97 + i)) for i in range(4)}
  large = {"kernel": jnp.ones((8 * 131, 2048))}  # 8.2 MiB: 1.02 MiB per replica
  for name, tree, expected in (("small", small, 0), ("large", large, 8)):
    state = jax.device_put(tree, replicated)
    assert _programs_lowered_while(lambda s=state, n=name: _save(tmp_path / n, 1, s)) == expected
    restored, _ = _restore(tmp_path / name, 1, tree)
    jax.tree.map(np.testing.assert_array_equal, restored, tree)
