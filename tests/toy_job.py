"""A toy training job for tests of the loop's machinery, and a fork server that runs it.

`setup` plugs a two-layer regression model (Dense, BatchNorm, tanh, Dense) and a seeded
synthetic stream into the real `sslax.loop.train`: the real Checkpointer (orbax,
asynchronous), metrics, preemption watch, `wav2vec2_step.make_update_step` and
`nonfinite.guard`, with a step that compiles in well under a second. `config.model.
embed_dim` sets the hidden width, so two widths are two model sizes.

`python tests/toy_job.py serve` imports everything once, then for each JSON request on
stdin forks a child that runs `loop.train` (output in WORKDIR/log.txt), prints the
child's pid, waits for it and prints how it ended: tests/test_sigkill.py kills such
children many times without paying for a Python start and TensorFlow import each time.
The server must start single-threaded (OPENBLAS_NUM_THREADS=1) and never touch a JAX
backend itself, so every child initialises its own.
"""

import os
import sys
import traceback

import flax.linen as nn
import fork_serve
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import demo
from sslax import loop
from sslax.core import sharding
from sslax.core import state as state_lib
from sslax.data import executor
from sslax.train import nonfinite, optim, wav2vec2_step

DIM = 16  # input features


class ToyModel(nn.Module):
  """x f32[B, DIM] -> prediction f32[B]; parameters carry logical axis names."""

  width: int

  @nn.compact
  def __call__(self, x_BxD: jax.Array, *, train: bool) -> jax.Array:
    init = nn.initializers.lecun_normal()
    h_BxH = nn.Dense(
      self.width,
      kernel_init=nn.with_logical_partitioning(init, ("embed", "mlp")),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)),
    )(x_BxD)
    h_BxH = jnp.tanh(nn.BatchNorm(use_running_average=not train, momentum=0.9)(h_BxH))
    return nn.Dense(1, kernel_init=nn.with_logical_partitioning(init, ("mlp", None)))(h_BxH)[:, 0]


def loss_fn(model: ToyModel) -> wav2vec2_step.LossFn:
  """Squared error summed over the batch, as a `wav2vec2_step.LossFn` (rows count as
  `masked_frames`, the step's denominator; `correct`: errors below 0.5)."""

  def fn(params, model_state, microbatch, rng, scalars):
    del rng, scalars
    prediction_B, updates = state_lib.apply_train(
      model, params, model_state, microbatch["audio"], train=True
    )
    error_B = prediction_B - microbatch["target"]
    loss_sum = jnp.sum(error_B**2)
    sums = {
      "loss": loss_sum,
      "masked_frames": jnp.asarray(error_B.shape[0], jnp.float32),
      "correct": jnp.sum(jnp.abs(error_B) < 0.5).astype(jnp.float32),
    }
    return loss_sum, (sums, updates)

  return fn


def build_trainer(
  config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, wrap_loss=lambda fn: fn
) -> wav2vec2_step.Trainer:
  """As `wav2vec2_step.build_trainer`, for the toy model; `wrap_loss` may alter the loss."""
  model = ToyModel(config.model.embed_dim)
  tx, schedule = optim.make_optimizer(config.optim, config.total_steps)

  def init_variables(rng):
    return model.init({"params": rng}, jnp.zeros((1, DIM), jnp.float32), train=False)

  init_fn, abstract_state, state_shardings = state_lib.abstract_state_and_shardings(
    init_variables, tx, mesh, all_collections=True
  )
  update = wav2vec2_step.make_update_step(
    wrap_loss(loss_fn(model)), lambda step: {}, tx, schedule, config.grad_accum_steps
  )
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  step = jax.jit(
    nonfinite.guard(update, config.nonfinite),
    in_shardings=(state_shardings, sharding.batch_sharding(mesh), replicated),
    out_shardings=(state_shardings, replicated),
    donate_argnums=0,
  )
  return wav2vec2_step.Trainer(model, schedule, init_fn, abstract_state, state_shardings, step)


class ToyStream:
  """Global batch k: `audio` x f32[B, DIM], `audio_paddings` zeros, `target` tanh(x·w)
  f32[B], seeded by k; this process's rows of it. Batches in `poisoned` get a NaN."""

  def __init__(self, batch_size: int, seed: int, poisoned=(), process_index=0, process_count=1):
    self._batch_size, self._seed, self._poisoned = batch_size, seed, set(poisoned)
    rows = batch_size // process_count
    self._rows = slice(process_index * rows, (process_index + 1) * rows)

  def host_batch(self, index: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self._seed, index])
    x = rng.standard_normal((self._batch_size, DIM)).astype(np.float32)
    w = np.random.default_rng(self._seed).standard_normal(DIM).astype(np.float32)
    target = np.tanh(x @ w / np.sqrt(DIM)).astype(np.float32)
    if index in self._poisoned:
      x[0, 0] = np.nan
    batch = {"audio": x, "audio_paddings": np.zeros_like(x), "target": target}
    return {name: value[self._rows] for name, value in batch.items()}

  def batches(self, position: int = 0) -> executor.Batches:
    """Read by the executor the real streams use."""
    return executor.Batches(
      lambda k: (self.host_batch(k), {"position": k + 1}), position, threads=1
    )


def setup(poisoned=(), wrap_loss=lambda fn: fn) -> loop.Setup:
  """A `loop.train` setup of the toy job; global batches in `poisoned` hold a NaN."""

  def toy_setup(config, workdir, mesh):
    del workdir
    stream = ToyStream(
      config.data.batch_size,
      config.seed,
      poisoned,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    )
    return stream, build_trainer(config, mesh, wrap_loss)

  return toy_setup


def config(**overrides) -> ml_collections.ConfigDict:
  """configs/demo.py:tiny's run fields (the toy reads model.embed_dim only), with
  overrides by dotted name: config(total_steps=5, **{'optim.learning_rate': 0.1})."""
  c = demo.get_config("tiny")
  c.unlock()
  c.log_every = 1
  c.optim.learning_rate = 0.01
  for name, value in overrides.items():
    *parents, field = name.split(".")
    node = c
    for parent in parents:
      node = node[parent]
    node[field] = value
  c.lock()
  return c


def serve() -> None:
  """The fork server (module docstring). Request: {"workdir", "config": overrides}."""
  fork_serve.serve(_child)


def _child(request: dict) -> None:
  code = 1
  try:
    fork_serve.log_to_workdir(request["workdir"])
    loop.train(config(**request["config"]), request["workdir"], setup())
    code = 0
  except BaseException:  # noqa: B036  anything: report it in the log, never return
    traceback.print_exc()
  finally:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
  if sys.argv[1:] != ["serve"]:
    raise SystemExit("usage: python tests/toy_job.py serve")
  serve()
