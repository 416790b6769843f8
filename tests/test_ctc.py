"""CTC pieces against independent references: the loss (hand-computed cases and a float64
numpy forward algorithm), greedy decoding, the vocabulary, the tri-stage schedule and the
fine-tuning optimizer's parameter groups."""

import json
import math

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import demo, demo_ctc
from sslax.core import text
from sslax.models import ctc, wav2vec2
from sslax.objectives import ctc as objective
from sslax.train import optim

# ---- CTC loss ------------------------------------------------------------------------


def numpy_ctc_nll(log_probs_FxV: np.ndarray, labels: list[int], blank: int = 0) -> float:
  """-log p(labels) by the CTC forward algorithm (Graves et al. 2006) in float64."""
  extended = [blank]
  for label in labels:
    extended += [label, blank]
  S, F = len(extended), log_probs_FxV.shape[0]
  alpha = np.full(S, -np.inf)
  alpha[0] = log_probs_FxV[0, blank]
  if S > 1:
    alpha[1] = log_probs_FxV[0, extended[1]]
  for t in range(1, F):
    previous = alpha.copy()
    for s in range(S):
      candidates = [previous[s]]
      if s >= 1:
        candidates.append(previous[s - 1])
      if s >= 2 and extended[s] != blank and extended[s] != extended[s - 2]:
        candidates.append(previous[s - 2])
      alpha[s] = np.logaddexp.reduce(candidates) + log_probs_FxV[t, extended[s]]
  total = np.logaddexp(alpha[-1], alpha[-2]) if S > 1 else alpha[-1]
  return -float(total)


def log_softmax64(logits: np.ndarray) -> np.ndarray:
  logits = logits.astype(np.float64)
  return logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)


def padded(rows: list[list[int]], length: int) -> tuple[np.ndarray, np.ndarray]:
  values = np.zeros((len(rows), length), np.int32)
  paddings = np.ones((len(rows), length), np.float32)
  for i, row in enumerate(rows):
    values[i, : len(row)] = row
    paddings[i, : len(row)] = 0.0
  return values, paddings


def test_ctc_loss_hand_computed_cases():
  # Vocabulary {blank, a, b}; frame probabilities chosen so each path is easy to write out.
  probs_FxV = np.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.4, 0.4, 0.2]])
  logits = np.log(probs_FxV)[None].astype(np.float32)
  frames = np.zeros((1, 3), np.float32)
  p = probs_FxV

  def nll(labels):
    labels_BxL, label_paddings = padded([labels], 4)
    loss, sums = objective.ctc_loss(jnp.asarray(logits), frames, labels_BxL, label_paddings)
    return float(loss), float(sums["infeasible"])

  # "a" over 3 frames: a__, _a_, __a, aa_, _aa, aaa.
  expected_a = (
    p[0, 1] * p[1, 0] * p[2, 0]
    + p[0, 0] * p[1, 1] * p[2, 0]
    + p[0, 0] * p[1, 0] * p[2, 1]
    + p[0, 1] * p[1, 1] * p[2, 0]
    + p[0, 0] * p[1, 1] * p[2, 1]
    + p[0, 1] * p[1, 1] * p[2, 1]
  )
  np.testing.assert_allclose(nll([1]), [-math.log(expected_a), 0.0], rtol=1e-5)
  # "aa" needs a blank between the two: exactly one path, a _ a.
  np.testing.assert_allclose(nll([1, 1]), [-math.log(p[0, 1] * p[1, 0] * p[2, 1]), 0], rtol=1e-5)
  # "ab" over 3 frames: ab_, a_b, _ab, aab, abb.
  expected_ab = (
    p[0, 1] * p[1, 2] * p[2, 0]
    + p[0, 1] * p[1, 0] * p[2, 2]
    + p[0, 0] * p[1, 1] * p[2, 2]
    + p[0, 1] * p[1, 1] * p[2, 2]
    + p[0, 1] * p[1, 2] * p[2, 2]
  )
  np.testing.assert_allclose(nll([1, 2]), [-math.log(expected_ab), 0.0], rtol=1e-5)
  # "aab" needs 4 frames: zero_infinity gives 0 and counts it.
  assert nll([1, 1, 2]) == (0.0, 1.0)


def test_ctc_loss_matches_float64_forward_algorithm():
  rng = np.random.default_rng(0)
  B, F, V, L = 5, 12, 6, 5
  logits = rng.normal(size=(B, F, V)).astype(np.float32) * 2
  frame_counts = [12, 9, 7, 12, 5]
  label_rows = [[1, 2, 3, 4, 5], [2, 2, 3], [5], [1, 1, 1, 1], [3, 4]]
  frame_paddings = (np.arange(F)[None, :] >= np.asarray(frame_counts)[:, None]).astype(np.float32)
  labels, label_paddings = padded(label_rows, L)
  loss, sums = objective.ctc_loss(jnp.asarray(logits), frame_paddings, labels, label_paddings)
  expected = [
    numpy_ctc_nll(log_softmax64(logits[b, : frame_counts[b]]), label_rows[b]) for b in range(B)
  ]
  # float32 log-space recursion over 12 frames: within 1e-5 relative of float64.
  np.testing.assert_allclose(float(loss), sum(expected), rtol=1e-5)
  assert float(sums["utterances"]) == B and float(sums["infeasible"]) == 0


def test_infeasible_utterances_contribute_no_loss_or_gradient():
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(2, 4, 4)).astype(np.float32))
  frame_paddings = np.zeros((2, 4), np.float32)
  # Row 0 is feasible; row 1 needs 5 frames (3 labels + 2 repeats) but has 4.
  labels, label_paddings = padded([[1, 2], [3, 3, 3]], 3)
  grad = jax.grad(lambda x: objective.ctc_loss(x, frame_paddings, labels, label_paddings)[0])(
    logits
  )
  assert np.isfinite(grad).all()
  assert not np.asarray(grad[1]).any() and np.asarray(grad[0]).any()
  loss, sums = objective.ctc_loss(logits, frame_paddings, labels, label_paddings)
  np.testing.assert_allclose(
    float(loss), numpy_ctc_nll(log_softmax64(np.asarray(logits[0])), [1, 2]), rtol=1e-5
  )
  assert float(sums["infeasible"]) == 1
  np.testing.assert_array_equal(objective.min_frames(labels, label_paddings), [2, 5])


# ---- Greedy decoding and the vocabulary ----------------------------------------------


def test_collapse_merges_repeats_then_drops_blanks():
  np.testing.assert_array_equal(text.collapse([0, 5, 5, 0, 5, 6, 6, 0, 0]), [5, 5, 6])
  np.testing.assert_array_equal(text.collapse([0, 0, 0]), [])
  np.testing.assert_array_equal(text.collapse([]), [])
  np.testing.assert_array_equal(text.collapse([7]), [7])


def test_normalization():
  assert text.normalize("  Hello, world!  it's   3-D\tstuff ") == "HELLO WORLD IT'S D STUFF"
  assert text.normalize("naïve café") == "NAÏVE CAFÉ"
  assert text.normalize("EACH LIP WITHOUT") == "EACH LIP WITHOUT"


def test_vocabulary_layout_and_round_trip(tmp_path):
  vocab = text.Vocabulary.build(["abb a", "Bob's"])
  # Specials, the delimiter, then characters by count (B: 4, A: 2, O: 1, S: 1, "'": 1).
  assert vocab.tokens == ("<pad>", "<s>", "</s>", "<unk>", "|", "B", "A", "'", "O", "S")
  ids = vocab.encode("ab, bob")
  np.testing.assert_array_equal(ids, [6, 5, 4, 5, 8, 5])
  assert vocab.decode(ids) == "AB BOB"
  assert vocab.decode(vocab.encode("zab")) == "AB"  # Z is unknown: <unk>, dropped in text
  assert vocab.encode("z")[0] == 3

  path = str(tmp_path / "vocab.json")
  vocab.save(path)
  with open(path) as f:
    assert json.load(f) == {token: i for i, token in enumerate(vocab.tokens)}
  assert text.Vocabulary.load(path) == vocab
  with open(path, "w") as f:
    json.dump({"<pad>": 0, "a": 1}, f)
  with pytest.raises(ValueError, match="vocab.json"):
    text.Vocabulary.load(path)


# ---- Tri-stage schedule and parameter groups -----------------------------------------


def fairseq_tri_stage(step, *, lr, total, ratios, init_scale, final_scale):
  """fairseq TriStageLRSchedule.step_update with phase_ratio, in float64."""
  warmup, hold, decay = (int(total * r) for r in ratios)
  init_lr = init_scale * lr
  if step < warmup:
    return init_lr + (lr - init_lr) / warmup * step
  if step < warmup + hold:
    return lr
  if step <= warmup + hold + decay:
    return lr * math.exp(math.log(final_scale) / decay * (step - warmup - hold))
  return lr * final_scale


def test_tri_stage_schedule_matches_fairseq():
  kwargs = dict(lr=5e-5, total=13_000, ratios=(0.1, 0.4, 0.5), init_scale=0.01, final_scale=0.05)
  schedule = optim.tri_stage_schedule(5e-5, 13_000, (0.1, 0.4, 0.5), 0.01, 0.05)
  for step in [0, 1, 650, 1299, 1300, 1301, 6499, 6500, 6501, 9000, 12_999, 13_000, 20_000]:
    expected = fairseq_tri_stage(step, **kwargs)
    # float32 schedule arithmetic: within 1e-5 relative.
    np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5, err_msg=str(step))
  assert float(schedule(0)) == pytest.approx(5e-7)
  assert float(schedule(13_000)) == pytest.approx(2.5e-6, rel=1e-5)
  with pytest.raises(ValueError, match="phase_ratios"):
    optim.tri_stage_schedule(1e-3, 100, (0.1, 0.4, 0.4), 0.01, 0.05)


def test_finetuning_optimizer_groups():
  """Frozen never moves; delayed starts at its step with a fresh Adam (bias-corrected)."""
  config = ml_collections.ConfigDict(
    dict(
      learning_rate=1e-2,
      phase_ratios=(0.0, 1.0, 0.0),
      init_lr_scale=0.01,
      final_lr_scale=0.05,
      freeze_finetune_updates=3,
      b1=0.9,
      b2=0.98,
      eps=1e-8,
      weight_decay=0.1,
      clip_norm=0.0,
    )
  )
  with pytest.raises(ValueError, match="decay"):
    optim.make_finetuning_optimizer(config, 10, lambda name: name)
  config.phase_ratios = (0.0, 0.9, 0.1)
  tx, _ = optim.make_finetuning_optimizer(config, 100, lambda name: name)
  params = {name: jnp.ones(2) for name in (optim.FROZEN, optim.TRAINED, optim.DELAYED)}
  state = tx.init(params)
  for step in range(5):
    grads = {"frozen": jnp.zeros(2), "trained": jnp.full(2, 0.5), "delayed": jnp.zeros(2)}
    if step >= 3:
      grads["delayed"] = jnp.full(2, 0.25)
    updates, state = tx.update(grads, state, params)
    np.testing.assert_array_equal(updates["frozen"], 0.0)
    if step < 3:
      np.testing.assert_array_equal(updates["delayed"], 0.0)  # no weight decay either
    if step == 3:
      # A fresh Adam's first bias-corrected step is exactly -lr (g/|g|) plus decay.
      np.testing.assert_allclose(updates["delayed"], -1e-2 * (1.0 + 0.1 * 1.0), rtol=1e-5)
    assert np.all(np.asarray(updates["trained"]) < 0)


# ---- Model -----------------------------------------------------------------------------


def test_ctc_model_shares_the_pretraining_parameter_names():
  config = demo_ctc.get_config("tiny")
  model = ctc.Wav2Vec2ForCTC(**config.model.to_dict(), vocab_size=11)
  audio = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16_080)), jnp.float32)
  paddings = jnp.zeros((2, 16_080)).at[1, 8_000:].set(1.0)
  mask = jnp.zeros((2, 50), bool)
  variables = jax.jit(lambda rng: model.init(rng, audio, paddings, mask, train=False))(
    jax.random.key(0)
  )
  logits, frame_paddings = jax.jit(lambda v: model.apply(v, audio, paddings, train=False))(
    variables
  )
  assert logits.shape == (2, 50, 11) and logits.dtype == jnp.float32
  assert frame_paddings.shape == (2, 50) and float(frame_paddings[1].sum()) > 0

  pretraining = wav2vec2.Wav2Vec2(**demo.get_config("tiny").model.to_dict())
  pre_variables = jax.eval_shape(
    lambda: pretraining.init(
      jax.random.key(0), audio, paddings, mask, train=False, gumbel_temperature=1.0
    )
  )

  def shapes(params):
    flat = flax.traverse_util.flatten_dict(nn.meta.unbox(params), sep="/")
    return {path: tuple(leaf.shape) for path, leaf in flat.items()}

  heads = ("quantizer", "project_q", "final_proj")  # pretraining only
  shared = {
    path: shape
    for path, shape in shapes(pre_variables["params"]).items()
    if path.split("/")[0] not in heads
  }
  assert shapes(variables["params"]) == {
    **shared,
    "lm_head/kernel": (32, 11),
    "lm_head/bias": (11,),
  }
