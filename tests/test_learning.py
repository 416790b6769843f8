"""The whole pretraining step can learn: a tiny model fits one fixed batch of demo speech.

A wiring check that unit tests miss: masks, targets, negatives, gradients and optimizer
must all line up for the contrastive accuracy to leave chance (1 / (K + 1)).
"""

import jax
import numpy as np
from streams import take

from configs import demo
from sslax.data import pretraining_stream
from sslax.train import sharding, wav2vec2_step
from sslax.train import state as state_lib


def test_tiny_model_fits_a_fixed_batch(demo_data_dir):
  config = demo.get_config("tiny")
  config.data.data_dir = demo_data_dir
  config.total_steps = 200
  config.optim.warmup_steps = 10
  config.optim.learning_rate = 2e-3
  stream = pretraining_stream.PretrainingStream(
    config.data,
    config.masking,
    wav2vec2_step.frames_fn(config),
    seed=0,
    process_index=0,
    process_count=1,
  )
  ((batch, _),) = take(stream.batches(), 1)
  mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  trainer = wav2vec2_step.build_trainer(config, mesh)
  state = state_lib.init_state(trainer.init_fn, trainer.state_shardings, jax.random.key(0))
  accuracies = []
  with sharding.activate(mesh):
    global_batch = sharding.global_batch(batch, mesh)
    for _ in range(100):
      state, metrics = trainer.step(state, global_batch, jax.random.key(1))
      accuracies.append(float(metrics["correct"] / metrics["masked_frames"]))
  chance = 1 / (config.objective.num_negatives + 1)
  assert np.mean(accuracies[:5]) < 3 * chance
  assert np.mean(accuracies[-10:]) > 0.7
