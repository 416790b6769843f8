"""Tests for sslax.objectives.hubert against a float64 numpy reference written from fairseq.

The reference follows fairseq's own formulation (frames gathered one by one, logits over
[positive, every cluster] with the positive's duplicate at -inf, cross-entropy against
index 0, accuracy as argmax == 0 and not argmin == 0), not sslax's softmax over clusters.

Tolerances: float32 JAX vs float64 numpy sums to rtol 1e-5 (counts exact); gradients vs
float64 central differences (h = 1e-5) to rtol 1e-4 plus atol 1e-5 · max|gradient|.
"""

import math
import typing

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslax.objectives import hubert

TEMP = 0.1


class Outputs(typing.NamedTuple):
  """The fields of the model's HuBERTOutput that the objective reads."""

  projected: tuple
  label_embeddings: tuple
  frame_paddings: np.ndarray
  feature_penalty: float


def _cosine(x, y):
  return np.dot(x, y) / (max(np.linalg.norm(x), 1e-8) * max(np.linalg.norm(y), 1e-8))


def _reference(outputs, mask, labels, weights):
  """float64 loops: (loss_sum, metric_sums) as fairseq's model and criterion compute them."""
  masked_weight, nomask_weight, penalty_weight = weights
  valid = np.asarray(outputs.frame_paddings) == 0
  sums, loss = {}, 0.0
  for i, (projected, embeddings, labels_i) in enumerate(
    zip(outputs.projected, outputs.label_embeddings, labels, strict=True)
  ):
    projected = np.asarray(projected, np.float64)
    embeddings = np.asarray(embeddings, np.float64)
    for kind, selected, weight in (("m", mask, masked_weight), ("u", ~mask, nomask_weight)):
      nll_sum, correct, count = 0.0, 0, 0
      for b, f in zip(*np.nonzero(selected & valid & (labels_i >= 0)), strict=True):
        positive = embeddings[labels_i[b, f]]
        logits = [_cosine(projected[b, f], positive) / TEMP]
        for negative in embeddings:
          equal = np.array_equal(negative, positive)
          logits.append(-np.inf if equal else _cosine(projected[b, f], negative) / TEMP)
        logits = np.array(logits)
        top = logits.max()
        nll_sum += top + math.log(np.sum(np.exp(logits - top))) - logits[0]
        correct += int(np.argmax(logits) == 0 and np.argmin(logits) != 0)
        count += 1
      sums.update({f"loss_{kind}_{i}": nll_sum, f"correct_{kind}_{i}": correct})
      sums[f"count_{kind}_{i}"] = count
      if weight > 0:
        loss += weight * nll_sum
  sample_size = (sums["count_m_0"] if masked_weight > 0 else 0) + (
    sums["count_u_0"] if nomask_weight > 0 else 0
  )
  penalty = outputs.feature_penalty * sample_size
  loss += penalty_weight * penalty
  sums.update(sample_size=sample_size, loss=loss, feature_penalty=penalty)
  return loss, sums


def _jax_loss(outputs, mask, labels, weights):
  masked_weight, nomask_weight, penalty_weight = weights
  return hubert.hubert_loss(
    jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), outputs),
    jnp.asarray(mask),
    [jnp.asarray(x) for x in labels],
    logit_temp=TEMP,
    pred_masked_weight=masked_weight,
    pred_nomask_weight=nomask_weight,
    feature_penalty_weight=penalty_weight,
  )


def _random_case(seed, classes=(5, 7), lengths=(10, 7, 4), frames=10, dim=6):
  """Two label sets, padded rows, ~15% ignored labels, a mask that also covers padding."""
  rng = np.random.default_rng(seed)
  batch = len(lengths)
  paddings = (np.arange(frames)[None, :] >= np.array(lengths)[:, None]).astype(np.float64)
  labels = []
  for k in classes:
    labels_k = rng.integers(0, k, size=(batch, frames))
    labels_k[rng.random((batch, frames)) < 0.15] = hubert.IGNORE_LABEL
    labels.append(labels_k)
  outputs = Outputs(
    projected=tuple(rng.normal(size=(batch, frames, dim)) for _ in classes),
    # torch's uniform_ initialisation, as the model's label_embs_concat.
    label_embeddings=tuple(rng.uniform(size=(k, dim)) for k in classes),
    frame_paddings=paddings,
    feature_penalty=0.37,
  )
  mask = rng.random((batch, frames)) < 0.5
  return outputs, mask, labels


def _assert_sums_close(actual, expected):
  loss, sums = actual
  expected_loss, expected_sums = expected
  assert sums.keys() == expected_sums.keys()
  np.testing.assert_allclose(float(loss), expected_loss, rtol=1e-5)
  for key, value in expected_sums.items():
    if key.startswith(("count_", "correct_", "sample_size")):
      assert float(sums[key]) == value, key
    else:
      np.testing.assert_allclose(float(sums[key]), value, rtol=1e-5, err_msg=key)


WEIGHTS = {"fairseq": (1.0, 0.0, 10.0), "both": (1.0, 0.5, 0.0), "unmasked-only": (0.0, 1.0, 10.0)}


@pytest.mark.parametrize("weights", list(WEIGHTS.values()), ids=list(WEIGHTS))
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_reference(seed, weights):
  outputs, mask, labels = _random_case(seed)
  expected = _reference(outputs, mask, labels, weights)
  assert expected[1]["count_m_0"] > 5 and expected[1]["count_u_1"] > 5
  _assert_sums_close(_jax_loss(outputs, mask, labels, weights), expected)


def test_hand_computed_case():
  # Clusters e0 = (1, 0), e1 = (0, 1), e2 = (-1, 0); temperature 0.1.
  embeddings = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
  projected = np.array([[[2, 0], [1, 0], [1, 1], [0, 3], [0, 1], [5, 5]]], np.float64)
  labels = np.array([[0, 1, 1, 2, -1, 0]])
  mask = np.array([[True, True, True, False, True, True]])
  paddings = np.array([[0, 0, 0, 0, 0, 1]], np.float64)
  outputs = Outputs((projected,), (embeddings,), paddings, 0.25)
  loss, sums = _jax_loss(outputs, mask, [labels], (1.0, 0.5, 2.0))

  # Frame 0: logits (10, 0, -10), label 0: right. Frame 1: same logits, label 1: wrong.
  # Frame 2: logits (a, a, -a), a = 10 / sqrt(2), label 1: a tie, which the true cluster
  # wins. Frame 3 (unmasked): logits (0, 10, 0), label 2: wrong. Frame 4 is ignored
  # (label -1), frame 5 is padding.
  a = 10 / math.sqrt(2)
  masked = [
    math.log(1 + math.exp(-10) + math.exp(-20)),
    10 + math.log(1 + math.exp(-10) + math.exp(-20)),
    math.log(2 + math.exp(-2 * a)),
  ]
  unmasked = math.log(2 + math.exp(10))
  # sample_size: 3 masked + 1 unmasked frames (both weights positive).
  expected = sum(masked) + 0.5 * unmasked + 2.0 * 0.25 * 4
  np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
  np.testing.assert_allclose(float(sums["loss_m_0"]), sum(masked), rtol=1e-6)
  np.testing.assert_allclose(float(sums["loss_u_0"]), unmasked, rtol=1e-6)
  assert float(sums["feature_penalty"]) == 0.25 * 4
  counts = {k: float(sums[k]) for k in ("correct_m_0", "count_m_0", "correct_u_0", "count_u_0")}
  assert counts == {"correct_m_0": 2, "count_m_0": 3, "correct_u_0": 0, "count_u_0": 1}
  assert float(sums["sample_size"]) == 4
  # The reference agrees with the hand computation.
  _assert_sums_close((loss, sums), _reference(outputs, mask, [labels], (1.0, 0.5, 2.0)))


def test_padded_and_ignored_frames_change_nothing():
  outputs, mask, labels = _random_case(3)
  weights = (1.0, 0.5, 10.0)
  excluded = (outputs.frame_paddings > 0)[None] | (np.stack(labels) < 0)
  assert excluded.any()

  def loss_of_projected(projected):
    return _jax_loss(outputs._replace(projected=projected), mask, labels, weights)[0]

  grads = jax.grad(loss_of_projected)(tuple(jnp.asarray(p, jnp.float32) for p in outputs.projected))
  for i, grad in enumerate(grads):
    assert np.all(np.asarray(grad)[excluded[i]] == 0)
    assert np.any(np.asarray(grad)[~excluded[i]] != 0)

  rng = np.random.default_rng(9)
  changed_projected = tuple(
    np.where(excluded[i][:, :, None], rng.normal(size=p.shape), p)
    for i, p in enumerate(outputs.projected)
  )
  # Padded frames take other (valid) labels; ignored ones another negative label.
  padded = outputs.frame_paddings > 0
  changed_labels = [np.where(padded, (x + 1) % 5, np.where(x < 0, -7, x)) for x in labels]
  before = _jax_loss(outputs, mask, labels, weights)
  after = _jax_loss(outputs._replace(projected=changed_projected), mask, changed_labels, weights)
  jax.tree.map(np.testing.assert_array_equal, before, after)


def _finite_difference(fn, x, h=1e-5):
  grad = np.zeros_like(x)
  for i in np.ndindex(x.shape):
    up, down = x.copy(), x.copy()
    up[i] += h
    down[i] -= h
    grad[i] = (fn(up) - fn(down)) / (2 * h)
  return grad


def _assert_grad_close(actual, expected):
  atol = 1e-5 * np.max(np.abs(expected))
  np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=1e-4, atol=atol)


def test_gradients_match_finite_differences():
  outputs, mask, labels = _random_case(4, classes=(4, 3), lengths=(6, 4), frames=6, dim=3)
  weights = (1.0, 0.5, 10.0)

  def jax_loss(projected, embeddings):
    return _jax_loss(
      outputs._replace(projected=projected, label_embeddings=embeddings), mask, labels, weights
    )[0]

  grad_p, grad_e = jax.grad(jax_loss, argnums=(0, 1))(
    tuple(jnp.asarray(p, jnp.float32) for p in outputs.projected),
    tuple(jnp.asarray(e, jnp.float32) for e in outputs.label_embeddings),
  )
  for i in range(2):

    def projected_loss(p, i=i):
      projected = outputs.projected[:i] + (p,) + outputs.projected[i + 1 :]
      return _reference(outputs._replace(projected=projected), mask, labels, weights)[0]

    def embedding_loss(e, i=i):
      embeddings = outputs.label_embeddings[:i] + (e,) + outputs.label_embeddings[i + 1 :]
      return _reference(outputs._replace(label_embeddings=embeddings), mask, labels, weights)[0]

    _assert_grad_close(grad_p[i], _finite_difference(projected_loss, outputs.projected[i]))
    _assert_grad_close(grad_e[i], _finite_difference(embedding_loss, outputs.label_embeddings[i]))


def test_label_set_count_must_match():
  outputs, mask, labels = _random_case(0)
  with pytest.raises(ValueError, match="1 label sets for a model with 2"):
    _jax_loss(outputs, mask, labels[:1], WEIGHTS["fairseq"])


def test_frame_labels_as_fairseq_forward_targets():
  units = np.arange(2 * 9).reshape(2, 9)
  units[1, 6:] = hubert.IGNORE_LABEL  # the second utterance has 6 units
  # 100 Hz units, 50 Hz frames: frame f takes unit 2f; index 10 is past the 9 units.
  labels = hubert.frame_labels(jnp.asarray(units), 6, label_rate=100, frame_rate=50)
  np.testing.assert_array_equal(labels, [[0, 2, 4, 6, 8, -1], [9, 11, 13, -1, -1, -1]])
  assert labels.dtype == jnp.int32
  # 50 Hz units: one each; 25 Hz: each unit covers two frames.
  same = hubert.frame_labels(jnp.asarray(units), 4, label_rate=50, frame_rate=50)
  np.testing.assert_array_equal(same, units[:, :4])
  half = hubert.frame_labels(jnp.asarray(units[:, :2]), 5, label_rate=25, frame_rate=50)
  np.testing.assert_array_equal(half, [[0, 0, 1, 1, -1], [9, 9, 10, 10, -1]])
