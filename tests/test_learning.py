"""The whole pretraining step can learn: the tiny model's loss falls clearly below chance.

A wiring check that unit tests miss: masks, targets, distractors, gradients and optimizer
must all line up for the contrastive loss to leave chance, ln(K + 1) with K = 100 as in
the papers. The model trains on a small fixed subset (4 batches of demo speech, cycled);
one that does not learn (a learning rate of 0, a target detached from the quantizer, a
prediction that ignores its context) stays at or above chance.
"""

import itertools
import math

import jax
import numpy as np
from streams import take
import xla_flags

from configs import demo
from sslax.core import sharding
from sslax.core import state as state_lib
from sslax.data import pretraining_stream
from sslax.train import wav2vec2_step

STEPS = 150


def test_tiny_model_loss_falls_below_chance_on_a_fixed_subset(demo_data_dir):
  config = demo.get_config("tiny")
  config.data.data_dir = demo_data_dir
  config.total_steps = STEPS
  config.optim.warmup_steps = 10
  config.optim.learning_rate = 2e-3
  config.objective.num_negatives = 100
  stream = pretraining_stream.PretrainingStream(
    config.data,
    config.masking,
    wav2vec2_step.frames_fn(config),
    seed=0,
    process_index=0,
    process_count=1,
  )
  subset = [batch for batch, _ in take(stream.batches(), 4)]
  mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  trainer = wav2vec2_step.build_trainer(config, mesh)
  state = state_lib.init_state(trainer.init_fn, trainer.state_shardings, jax.random.key(0))
  losses, accuracies = [], []
  with sharding.activate(mesh):
    subset = [sharding.global_batch(batch, mesh) for batch in subset]
    # 150 updates: compiled for speed.
    train_step = xla_flags.optimized(trainer.step, state, subset[0], jax.random.key(1))
    for step, batch in zip(range(STEPS), itertools.cycle(subset)):
      state, metrics = train_step(state, batch, jax.random.fold_in(jax.random.key(1), step))
      losses.append(float(metrics["contrastive_loss"] / metrics["masked_frames"]))
      accuracies.append(float(metrics["correct"] / metrics["masked_frames"]))
  chance = math.log(config.objective.num_negatives + 1)
  assert np.mean(losses[:5]) > chance - 0.1, losses[:5]  # starts at chance (or above)
  assert np.mean(losses[-10:]) < chance - 0.5, losses[-10:]
  # Chance accuracy is about 0.05 here: 100 draws from about 25 masked frames per row.
  assert np.mean(accuracies[-10:]) > 0.2, accuracies[-10:]
