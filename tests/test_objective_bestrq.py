"""Tests for sslax.objectives.bestrq against a float64 numpy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special

from sslax.objectives import bestrq


def _inputs(seed=0, shape=(3, 7, 4, 11)):
  rng = np.random.default_rng(seed)
  logits = (3.0 * rng.normal(size=shape)).astype(np.float32)
  targets = rng.integers(0, shape[-1], size=shape[:-1]).astype(np.int32)
  mask = rng.random(shape[:2]) < 0.4
  # Some frames predicted right, so accuracy is not trivially 0.
  logits[0, :, 0, :] = -10.0
  np.put_along_axis(logits[0, :, 0, :], targets[0, :, 0, None], 10.0, axis=-1)
  mask[0, :4] = True
  return logits, targets, mask


def test_loss_and_metrics_match_numpy():
  logits, targets, mask = _inputs()
  loss_sum, metrics = jax.jit(bestrq.bestrq_loss)(logits, targets, mask)
  log_probs = scipy.special.log_softmax(logits.astype(np.float64), axis=-1)
  nll = -np.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]  # [B, T, G]
  correct = np.argmax(logits, axis=-1) == targets
  expected_loss = nll.mean(-1)[mask].sum()
  np.testing.assert_allclose(loss_sum, expected_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics["loss"], expected_loss, rtol=1e-5)
  assert metrics["masked_frames"] == mask.sum()
  np.testing.assert_allclose(metrics["correct"], correct.mean(-1)[mask].sum(), rtol=1e-6)
  assert 0 < metrics["correct"] < metrics["masked_frames"]


def test_unmasked_frames_do_not_count_and_gradient_is_softmax_minus_onehot():
  logits, targets, mask = _inputs(seed=1)
  changed = logits.copy()
  changed[~mask] = 100.0 * np.random.default_rng(2).normal(size=changed[~mask].shape)
  same, _ = bestrq.bestrq_loss(changed, targets, mask)
  np.testing.assert_allclose(same, bestrq.bestrq_loss(logits, targets, mask)[0], rtol=1e-6)

  grad = jax.grad(lambda x: bestrq.bestrq_loss(x, targets, mask)[0])(jnp.asarray(logits))
  probs = scipy.special.softmax(logits.astype(np.float64), axis=-1)
  onehot = np.eye(logits.shape[-1])[targets]
  expected = (probs - onehot) / logits.shape[2] * mask[:, :, None, None]
  np.testing.assert_allclose(grad, expected, atol=1e-6)


def test_bfloat16_logits_are_computed_in_float32():
  logits, targets, mask = _inputs(seed=3)
  low = jnp.asarray(logits, jnp.bfloat16)
  loss_sum, _ = bestrq.bestrq_loss(low, targets, mask)
  assert loss_sum.dtype == jnp.float32
  reference, _ = bestrq.bestrq_loss(np.asarray(low, np.float32), targets, mask)
  np.testing.assert_allclose(loss_sum, reference, rtol=1e-6)
