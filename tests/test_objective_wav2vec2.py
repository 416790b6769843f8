"""Tests for sslax.objectives.wav2vec2 against a float64 numpy reference written from fairseq.

Tolerances: float32 JAX vs float64 numpy losses to rtol 1e-5; gradients vs float64 central
differences (h = 1e-5) to rtol 1e-4 plus atol 1e-5 · max|gradient|.
"""

import math
import typing

import fairseq_reference
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from sslax.objectives import wav2vec2

TEMP = 0.1


class Outputs(typing.NamedTuple):
  """The fields of the model's Wav2Vec2Output that the objective reads."""

  projected: jax.Array
  targets: jax.Array
  frame_paddings: jax.Array
  feature_penalty: jax.Array
  prob_sums: jax.Array
  code_counts: jax.Array
  quantized_frames: jax.Array
  num_codevectors: int


def _reference_contrastive(projected, targets, mask, negatives, temp=TEMP):
  """float64 loops: (loss_sum, correct, count) as fairseq's criterion computes them.

  Each row is one fairseq utterance, whose masked frames are gathered (tsz of them) and
  whose distractors are drawn among them. fairseq's `sample_negatives` asserts
  `high = tsz > 1`: an utterance with fewer than 2 masked frames has no defined loss
  and raises here as there.
  """
  projected = np.asarray(projected, np.float64)
  targets = np.asarray(targets, np.float64)
  loss_sum, correct, count = 0.0, 0, 0
  for b in range(mask.shape[0]):
    high = mask[b].sum()
    assert high > 1, f"fairseq's sample_negatives: high = {high} masked frames in row {b}"
    for f in np.flatnonzero(mask[b]):
      x = projected[b, f]
      candidates = [targets[b, f]] + [targets[b, n] for n in negatives[b, f]]
      logits = []
      for k, y in enumerate(candidates):
        if k > 0 and np.array_equal(y, targets[b, f]):
          logits.append(-np.inf)
        else:
          norm = max(np.linalg.norm(x), 1e-8) * max(np.linalg.norm(y), 1e-8)
          logits.append(np.dot(x, y) / norm / temp)
      logits = np.array(logits)
      top = logits.max()
      loss_sum += top + math.log(np.sum(np.exp(logits - top))) - logits[0]
      correct += int(np.argmax(logits) == 0 and np.argmin(logits) != 0)
      count += 1
  return loss_sum, correct, count


def _random_case(seed, masked_per_row=(9, 4, 2), frames=12, dim=8, negatives=5):
  """Gaussian projected/targets, masks with the given per-row counts, sampled negatives."""
  batch = len(masked_per_row)
  rng = np.random.default_rng(seed)
  projected = rng.normal(size=(batch, frames, dim))
  targets = rng.normal(size=(batch, frames, dim))
  mask = np.zeros((batch, frames), bool)
  for b, m in enumerate(masked_per_row):
    mask[b, rng.choice(frames - 2, m, replace=False)] = True  # last two frames: "padding"
  negs = wav2vec2.sample_negatives(jax.random.key(seed), jnp.asarray(mask), negatives)
  return projected, targets, mask, np.array(negs)


def _jax_contrastive(projected, targets, mask, negatives):
  return wav2vec2.contrastive_loss(
    jnp.asarray(projected, jnp.float32),
    jnp.asarray(targets, jnp.float32),
    jnp.asarray(mask),
    jnp.asarray(negatives),
    logit_temp=TEMP,
  )


def _central_differences(fn, x, h=1e-5):
  grad = np.zeros_like(x)
  for i in np.ndindex(x.shape):
    up, down = x.copy(), x.copy()
    up[i] += h
    down[i] -= h
    grad[i] = (fn(up) - fn(down)) / (2 * h)
  return grad


def _assert_grad_close(actual, expected):
  atol = 1e-5 * np.abs(expected).max()
  np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=1e-4, atol=atol)


# Sampler.


def test_sampler_only_other_masked_frames_of_the_row():
  frames, k = 64, 100
  mask = np.zeros((4, frames), bool)
  mask[0, 3:50] = True  # 47 masked, then padding-like unmasked tail
  mask[1, [5, 9, 30, 31, 40]] = True
  mask[2, [0, 63]] = True  # two masked frames: each must draw the other
  mask[3, 10:20] = True
  negs = np.asarray(wav2vec2.sample_negatives(jax.random.key(0), jnp.asarray(mask), k))
  assert negs.shape == (4, frames, k) and negs.dtype == np.int32
  for b in range(4):
    for f in np.flatnonzero(mask[b]):
      assert np.all(negs[b, f] != f)
      assert np.all(mask[b, negs[b, f]])
  assert np.all(negs[2, 0] == 63) and np.all(negs[2, 63] == 0)
  # Unmasked frames point at themselves.
  unmasked = np.argwhere(~mask)
  assert np.all(negs[unmasked[:, 0], unmasked[:, 1]] == unmasked[:, 1:2])


def test_sampler_is_uniform():
  # Per masked frame, the counts over its m - 1 candidates follow a uniform multinomial.
  # Pooled chi-square (~3,300 degrees of freedom); a sampler that favoured any candidate
  # by 10% (or never drew one) lands hundreds of sigma out.
  frames, k = 96, 3000
  mask = np.zeros((3, frames), bool)
  mask[0, 10:70] = True
  mask[1, [2, 7, 8, 9, 50, 51, 90]] = True
  mask[2, ::3] = True
  negs = np.asarray(wav2vec2.sample_negatives(jax.random.key(1), jnp.asarray(mask), k))
  statistic, dof = 0.0, 0
  for b in range(3):
    others = np.flatnonzero(mask[b])
    for f in others:
      candidates = others[others != f]
      observed = np.array([(negs[b, f] == c).sum() for c in candidates])
      assert observed.sum() == k
      expected = k / len(candidates)
      statistic += np.sum((observed - expected) ** 2 / expected)
      dof += len(candidates) - 1
  assert 1e-4 < stats.chi2.sf(statistic, dof) < 1 - 1e-4


def test_sampler_rows_without_distractors():
  mask = np.zeros((3, 8), bool)
  mask[0, 2] = True  # one masked frame
  mask[2, 1:6] = True
  negs = np.asarray(wav2vec2.sample_negatives(jax.random.key(2), jnp.asarray(mask), 7))
  own = np.broadcast_to(np.arange(8)[:, None], (8, 7))
  np.testing.assert_array_equal(negs[0], own)
  np.testing.assert_array_equal(negs[1], own)
  assert np.all(mask[2, negs[2, 1:6]])


def test_sampler_jit_and_determinism():
  mask = jnp.asarray(np.random.default_rng(3).random((4, 50)) < 0.5)
  jitted = jax.jit(wav2vec2.sample_negatives, static_argnums=2)
  eager = wav2vec2.sample_negatives(jax.random.key(4), mask, 10)
  np.testing.assert_array_equal(jitted(jax.random.key(4), mask, 10), eager)
  assert np.any(np.asarray(jitted(jax.random.key(5), mask, 10)) != np.asarray(eager))


# Contrastive loss.


def test_hand_computed_case():
  # Frame 0: cos(pos) = 1, cos(neg) = 0 -> logits (10, 0), correct.
  # Frame 1: projected (1, 1) is 45 degrees from both targets -> tie, loss log 2, and
  # fairseq does not count an all-equal row as correct.
  projected = np.array([[[1.0, 0.0], [1.0, 1.0]]])
  targets = np.array([[[1.0, 0.0], [0.0, 1.0]]])
  mask = np.array([[True, True]])
  negatives = np.array([[[1], [0]]])
  loss_sum, correct, count = _jax_contrastive(projected, targets, mask, negatives)
  np.testing.assert_allclose(loss_sum, math.log1p(math.exp(-10.0)) + math.log(2.0), rtol=1e-6)
  assert int(correct) == 1 and int(count) == 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference(seed):
  projected, targets, mask, negatives = _random_case(seed)
  loss_sum, correct, count = _jax_contrastive(projected, targets, mask, negatives)
  ref_loss, ref_correct, ref_count = _reference_contrastive(projected, targets, mask, negatives)
  np.testing.assert_allclose(float(loss_sum), ref_loss, rtol=1e-5)
  assert int(correct) == ref_correct and int(count) == ref_count == mask.sum()


def test_accuracy_counts_wins():
  # Projected equal to its target wins its row unless a distractor is just as close.
  projected, targets, mask, negatives = _random_case(5)
  _, correct, count = _jax_contrastive(targets, targets, mask, negatives)
  assert int(correct) == int(count)
  _, correct, _ = _jax_contrastive(-targets, targets, mask, negatives)
  assert int(correct) == 0


def test_neg_is_pos():
  projected, targets, mask, negatives = _random_case(6)
  masked = np.flatnonzero(mask[0])
  a, c = masked[0], masked[1]
  targets[0, c] = targets[0, a]  # two frames quantized to the same codewords
  negatives[0, a, :2] = c
  negatives[0, c, :] = a  # every distractor equals the positive: loss 0, counted correct
  loss_sum, correct, count = _jax_contrastive(projected, targets, mask, negatives)
  ref_loss, ref_correct, ref_count = _reference_contrastive(projected, targets, mask, negatives)
  np.testing.assert_allclose(float(loss_sum), ref_loss, rtol=1e-5)
  assert (int(correct), int(count)) == (ref_correct, ref_count)
  # A row whose only two masked frames share a target: every distractor is -inf, so each
  # frame has loss 0 and counts as correct (fairseq: argmax 0, argmin elsewhere).
  pair_mask = np.zeros_like(mask)
  pair_mask[0, [a, c]] = True
  pair_negatives = wav2vec2.sample_negatives(jax.random.key(6), jnp.asarray(pair_mask), 5)
  pair_loss, pair_correct, pair_count = _jax_contrastive(
    projected, targets, pair_mask, pair_negatives
  )
  np.testing.assert_allclose(float(pair_loss), 0.0, atol=1e-7)
  assert int(pair_correct) == int(pair_count) == 2

  # The gradient w.r.t. projected (targets untouched keep the equality) matches too.
  grad = jax.grad(lambda p: _jax_contrastive(p, targets, mask, negatives)[0])(
    jnp.asarray(projected, jnp.float32)
  )
  expected = _central_differences(
    lambda p: _reference_contrastive(p, targets, mask, negatives)[0], projected
  )
  _assert_grad_close(grad, expected)


def test_gradients_match_finite_differences():
  projected, targets, mask, negatives = _random_case(7, masked_per_row=(6, 3), frames=10, dim=6)
  grad_p, grad_t = jax.grad(
    lambda p, t: _jax_contrastive(p, t, mask, negatives)[0], argnums=(0, 1)
  )(jnp.asarray(projected, jnp.float32), jnp.asarray(targets, jnp.float32))
  expected_p = _central_differences(
    lambda p: _reference_contrastive(p, targets, mask, negatives)[0], projected
  )
  expected_t = _central_differences(
    lambda t: _reference_contrastive(projected, t, mask, negatives)[0], targets
  )
  _assert_grad_close(grad_p, expected_p)
  _assert_grad_close(grad_t, expected_t)
  # Unmasked frames' context vectors get no gradient; their targets do (as distractors).
  assert np.all(np.asarray(grad_p)[~mask] == 0)


def test_rows_with_zero_or_one_masked_frame():
  projected, targets, mask, _ = _random_case(8, masked_per_row=(6, 1, 0))
  negatives = wav2vec2.sample_negatives(jax.random.key(8), jnp.asarray(mask), 5)
  projected[2] = 0.0  # zero vectors must not give NaN gradients either
  loss_fn = lambda p, t: _jax_contrastive(p, t, mask, negatives)[0]  # noqa: E731
  loss_sum, correct, count = _jax_contrastive(projected, targets, mask, negatives)
  grads = jax.grad(loss_fn, argnums=(0, 1))(
    jnp.asarray(projected, jnp.float32), jnp.asarray(targets, jnp.float32)
  )
  assert np.isfinite(float(loss_sum)) and int(count) == 6
  assert all(np.all(np.isfinite(g)) for g in grads)
  # fairseq has no loss for such a batch: sample_negatives asserts high > 1.
  with pytest.raises(AssertionError, match="high = 1"):
    _reference_contrastive(projected, targets, mask, np.asarray(negatives))
  # sslax leaves those rows out (documented in contrastive_loss): the loss is fairseq's on
  # the batch without them, and their frames get no gradient.
  ref_loss, ref_correct, ref_count = _reference_contrastive(
    projected[:1], targets[:1], mask[:1], np.asarray(negatives)[:1]
  )
  np.testing.assert_allclose(float(loss_sum), ref_loss, rtol=1e-5)
  assert (int(correct), int(count)) == (ref_correct, ref_count)
  assert np.all(np.asarray(grads[0])[1:] == 0)

  empty = np.zeros_like(mask)
  loss_sum, correct, count = _jax_contrastive(projected, targets, empty, negatives)
  assert (float(loss_sum), int(correct), int(count)) == (0.0, 0, 0)


def test_low_precision_inputs_computed_in_float32():
  projected, targets, mask, negatives = _random_case(9)
  loss_sum, _, _ = wav2vec2.contrastive_loss(
    jnp.asarray(projected, jnp.bfloat16),
    jnp.asarray(targets, jnp.bfloat16),
    jnp.asarray(mask),
    jnp.asarray(negatives),
    logit_temp=TEMP,
  )
  assert loss_sum.dtype == jnp.float32
  rounded = lambda x: np.asarray(jnp.asarray(x, jnp.bfloat16), np.float64)  # noqa: E731
  ref = _reference_contrastive(rounded(projected), rounded(targets), mask, negatives)[0]
  np.testing.assert_allclose(float(loss_sum), ref, rtol=1e-5)


# Diversity: fairseq's per-GPU definition.

GROUPS, VARS = 2, 8
GV = GROUPS * VARS


def _codeword_sums(logits_BxFxGxV, mask_BxF, paddings_BxF):
  """What the quantizer returns for these logits: per-row sums over masked, unpadded frames."""
  weights_BxF = jnp.asarray(mask_BxF & (paddings_BxF == 0), jnp.float32)
  logits_BxFxGxV = jnp.asarray(logits_BxFxGxV, jnp.float32)
  hard = jax.nn.one_hot(jnp.argmax(logits_BxFxGxV, -1), VARS)
  per_row = lambda x: jnp.sum(x * weights_BxF[:, :, None, None], axis=1)  # noqa: E731
  return per_row(jax.nn.softmax(logits_BxFxGxV, -1)), per_row(hard), weights_BxF.sum(1)


def _diversity_case(seed, masked_per_row=(9, 4, 2, 7, 5, 3), frames=12):
  """A contrastive case plus codeword logits; the last two frames are padding, with
  logits there that would dominate any mean they entered."""
  projected, targets, mask, negatives = _random_case(seed, masked_per_row, frames)
  paddings = np.zeros(mask.shape)
  paddings[:, -2:] = 1.0
  logits = np.random.default_rng(seed + 100).normal(size=(*mask.shape, GROUPS, VARS)) * 2
  logits[:, -2:, :, 0] = 50.0
  return projected, targets, mask, negatives, paddings, logits


def _outputs(projected, targets, *, penalty=0.37, logits=None, mask=None, paddings=None):
  if logits is None:
    logits = np.zeros((*projected.shape[:2], GROUPS, VARS))
    mask = np.zeros(projected.shape[:2], bool)
  if paddings is None:
    paddings = np.zeros(projected.shape[:2])
  prob_sums, code_counts, frames = _codeword_sums(logits, mask, paddings)
  return Outputs(
    projected=jnp.asarray(projected, jnp.float32),
    targets=jnp.asarray(targets, jnp.float32),
    frame_paddings=jnp.asarray(paddings, jnp.float32),
    feature_penalty=jnp.float32(penalty),
    prob_sums=prob_sums,
    code_counts=code_counts,
    quantized_frames=frames,
    num_codevectors=GV,
  )


def _blocks(batch, num_shards):
  return np.split(np.arange(batch), num_shards)


@pytest.mark.parametrize("num_shards", [1, 2, 3, 6])
def test_full_loss_and_metric_sums(num_shards):
  projected, targets, mask, negatives, paddings, logits = _diversity_case(10)
  loss_fn = jax.jit(
    lambda outputs, m, n: wav2vec2.wav2vec2_loss(
      outputs,
      m,
      n,
      logit_temp=TEMP,
      diversity_weight=0.1,
      feature_penalty_weight=10.0,
      num_shards=num_shards,
    )
  )
  outputs = _outputs(projected, targets, logits=logits, mask=mask, paddings=paddings)
  loss_sum, sums = loss_fn(outputs, jnp.asarray(mask), jnp.asarray(negatives))
  contrastive, correct, n = _reference_contrastive(projected, targets, mask, negatives)
  diversity, prob_ppl, code_ppl, sample_size = fairseq_reference.diversity(
    logits, mask, paddings, _blocks(len(mask), num_shards)
  )
  assert sample_size == n
  expected = contrastive + 0.1 * diversity + 10.0 * 0.37 * n
  np.testing.assert_allclose(float(loss_sum), expected, rtol=1e-5)
  expected_sums = {
    "masked_frames": n,
    "loss": expected,
    "contrastive_loss": contrastive,
    "correct": correct,
    "diversity_loss": diversity,
    "feature_penalty": 0.37 * n,
    "prob_perplexity": prob_ppl,
    "code_perplexity": code_ppl,
  }
  assert set(sums) == set(expected_sums)
  for key, value in expected_sums.items():
    assert sums[key].shape == () and sums[key].dtype == jnp.float32
    np.testing.assert_allclose(float(sums[key]), value, rtol=1e-5, err_msg=key)


def test_diversity_is_per_shard():
  """Each shard's term depends on its own rows only: it does not change when the global
  batch doubles with more shards of the same size, where the whole-batch perplexity does."""
  _, _, mask, _, paddings, logits = _diversity_case(11, masked_per_row=(6, 3, 5, 4) * 2)
  frames_B = mask.sum(1).astype(np.float32)

  def diversity(rows, num_shards):
    outputs = _outputs(
      np.zeros((len(rows), 1, 1)),
      np.zeros((len(rows), 1, 1)),
      logits=logits[rows],
      mask=mask[rows],
      paddings=paddings[rows],
    )
    return np.asarray(
      wav2vec2.diversity_sums(outputs, jnp.asarray(frames_B[rows]), num_shards=num_shards),
      np.float64,
    )

  # Two shards of 2 rows, then four: the first two shards' terms are unchanged, and each
  # is fairseq's for that GPU's rows.
  half, whole = diversity(np.arange(4), 2), diversity(np.arange(8), 4)
  other_half = diversity(np.arange(4, 8), 2)
  np.testing.assert_allclose(whole, half + other_half, rtol=1e-5)
  np.testing.assert_allclose(
    whole, fairseq_reference.diversity(logits, mask, paddings, _blocks(8, 4))[:3], rtol=1e-5
  )
  # Under the whole-batch definition (one perplexity for the batch) the doubled batch's
  # term is not the sum of its halves': the checks above would fail on it.
  whole_batch = fairseq_reference.diversity(logits, mask, paddings, [np.arange(8)])[0]
  halves = sum(fairseq_reference.diversity(logits, mask, paddings, [r])[0] for r in _blocks(8, 2))
  assert abs(whole_batch - halves) > 100 * 1e-5 * abs(halves)
  with pytest.raises(ValueError, match="num_shards=3"):
    diversity(np.arange(8), 3)


def test_full_loss_gradients():
  projected, targets, mask, negatives, paddings, logits = _diversity_case(
    12, (5, 2, 4, 3), frames=8
  )
  num_shards = 2

  def loss_of(p, t, penalty, codeword_logits):
    outputs = _outputs(p, t, logits=codeword_logits, mask=mask, paddings=paddings)
    return wav2vec2.wav2vec2_loss(
      outputs._replace(feature_penalty=penalty),
      mask,
      negatives,
      logit_temp=TEMP,
      diversity_weight=0.1,
      feature_penalty_weight=10.0,
      num_shards=num_shards,
    )[0]

  grads = jax.grad(loss_of, argnums=(0, 1, 2, 3))(
    jnp.asarray(projected, jnp.float32),
    jnp.asarray(targets, jnp.float32),
    jnp.float32(0.37),
    jnp.asarray(logits, jnp.float32),
  )
  n = mask.sum()
  np.testing.assert_allclose(float(grads[2]), 10.0 * n, rtol=1e-6)
  # The diversity term's gradient w.r.t. the codeword logits, from fairseq per shard.
  shards = _blocks(len(mask), num_shards)
  expected_logits = _central_differences(
    lambda x: 0.1 * fairseq_reference.diversity(x, mask, paddings, shards)[0], logits
  )
  _assert_grad_close(grads[3], expected_logits)
  assert np.all(np.asarray(grads[3])[paddings == 1] == 0)
  # The extra terms do not touch projected / targets: those gradients are the InfoNCE ones.
  expected_t = _central_differences(
    lambda t: _reference_contrastive(projected, t, mask, negatives)[0], targets
  )
  _assert_grad_close(grads[1], expected_t)


def test_sums_add_across_microbatches_and_shards():
  """Two shards of one batch give the sums of the two halves, each its own shard."""
  projected, targets, mask, negatives, paddings, logits = _diversity_case(
    13, masked_per_row=(9, 4, 2, 7)
  )

  def sums(rows, num_shards):
    return wav2vec2.wav2vec2_loss(
      _outputs(
        projected[rows],
        targets[rows],
        logits=logits[rows],
        mask=mask[rows],
        paddings=paddings[rows],
      ),
      mask[rows],
      negatives[rows],
      logit_temp=TEMP,
      diversity_weight=0.1,
      feature_penalty_weight=10.0,
      num_shards=num_shards,
    )[1]

  whole, first, second = sums(slice(0, 4), 2), sums(slice(0, 2), 1), sums(slice(2, 4), 1)
  for key in whole:
    np.testing.assert_allclose(
      float(whole[key]), float(first[key]) + float(second[key]), rtol=1e-5, err_msg=key
    )
