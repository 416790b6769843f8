"""The learning-rate schedule against fairseq's polynomial_decay formula, in float64."""

import logging

import ml_collections
import numpy as np
import pytest

from sslax.train import optim


def fairseq_polynomial_decay(step, *, lr, warmup, total, power=1.0, end_lr=0.0):
  """fairseq PolynomialDecayLRSchedule.step_update, written out independently."""
  if warmup > 0 and step <= warmup:
    return lr * step / warmup
  if step >= total:
    return end_lr
  remaining = 1 - (step - warmup) / (total - warmup)
  return (lr - end_lr) * remaining**power + end_lr


def test_schedule_matches_fairseq():
  schedule = optim.polynomial_decay_schedule(5e-4, 320, 4000)
  for step in [0, 1, 100, 319, 320, 321, 1000, 3999, 4000, 5000]:
    expected = fairseq_polynomial_decay(step, lr=5e-4, warmup=320, total=4000)
    # float32 schedule arithmetic: within 1e-5 relative, or 2e-6 of the peak near zero.
    np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5, atol=1e-9)


def test_adam_with_decoupled_weight_decay_matches_numpy():
  """One update of fairseq's Adam (bias-corrected, decoupled decay) on a known gradient."""
  config = ml_collections.ConfigDict(
    dict(
      learning_rate=1e-2, warmup_steps=0, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.1, clip_norm=0.0
    )
  )
  tx, schedule = optim.make_optimizer(config, total_steps=10)
  params = {"w": np.array([1.0, -2.0], np.float32)}
  grads = {"w": np.array([0.5, 0.25], np.float32)}
  updates, _ = tx.update(grads, tx.init(params), params)
  lr = float(schedule(0))
  m = 0.1 * grads["w"] / (1 - 0.9)
  v = 0.02 * grads["w"] ** 2 / (1 - 0.98)
  expected = -lr * (m / (np.sqrt(v) + 1e-6) + 0.1 * params["w"])
  np.testing.assert_allclose(np.asarray(updates["w"]), expected, rtol=1e-5)


def test_a_warmup_longer_than_the_run_takes_the_whole_run(caplog):
  with caplog.at_level(logging.WARNING):
    clipped = optim.polynomial_decay_schedule(1e-3, 45, 20)
  assert "config.optim.warmup_steps=45 is longer than config.total_steps=20" in caplog.text
  whole = optim.polynomial_decay_schedule(1e-3, 20, 20)
  for step in (0, 5, 19, 20):
    assert float(clipped(step)) == float(whole(step))
  assert float(clipped(20)) == pytest.approx(1e-3)
  with pytest.raises(ValueError, match="config.optim.warmup_steps=-1 must not be negative"):
    optim.polynomial_decay_schedule(1e-3, -1, 20)
