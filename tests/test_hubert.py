"""Tests for sslax.models.hubert: the head on the shared backbone, one or several label sets.

The projections are checked against float64 numpy from the parameters and the encoder
output (the last hidden state) to 1e-5 absolute; everything else is exact.
"""

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from sslax.models import frontends, hubert
from sslax.objectives import hubert as objective
from sslax.registry import model_types

SMALL = dict(
  conv_layers=((16, 10, 5), (16, 3, 2), (16, 2, 2)),
  embed_dim=24,
  num_layers=1,
  num_heads=4,
  mlp_dim=32,
  pos_conv_kernel=8,
  pos_conv_groups=4,
  final_dim=8,
)
LENGTHS = (1200, 900)  # samples: 59 and 44 frames


def _batch():
  rng = np.random.default_rng(0)
  audio_BxS = rng.normal(size=(len(LENGTHS), max(LENGTHS))).astype(np.float32)
  paddings_BxS = (np.arange(max(LENGTHS))[None] >= np.array(LENGTHS)[:, None]).astype(np.float32)
  frames = frontends.num_frames(max(LENGTHS), SMALL["conv_layers"])
  mask_BxF = rng.random((len(LENGTHS), frames)) < 0.4
  return audio_BxS * (1 - paddings_BxS), paddings_BxS, mask_BxF


def _init_and_run(model_config, seed):
  """(params, output on `_batch()` with hidden states) of a fresh HuBERT, in one compile."""
  model = hubert.HuBERT(**model_config)
  init = jax.jit(
    lambda rng: model.init_with_output(rng, *_batch(), train=False, return_hidden_states=True)
  )
  out, variables = init(jax.random.key(seed))
  return nn.meta.unbox(variables["params"]), out


@pytest.mark.parametrize("untie", [True, False])
def test_head_projects_and_splits_per_label_set(untie):
  model_config = common.hubert_model(**SMALL, num_classes=(500, 7), untie_final_proj=untie)
  params, out = _init_and_run(model_config, seed=0)

  width = 8 * 2 if untie else 8
  assert params["final_proj"]["kernel"].shape == (24, width)
  assert params["label_embs_concat"].shape == (507, 8)
  frames = out.frame_paddings.shape[1]
  assert [p.shape for p in out.projected] == [(2, frames, 8)] * 2
  assert all(p.dtype == jnp.float32 for p in out.projected)

  encoded = np.asarray(out.hidden_states[-1], np.float64)
  kernel = np.asarray(params["final_proj"]["kernel"], np.float64)
  bias = np.asarray(params["final_proj"]["bias"], np.float64)
  for i, projected in enumerate(out.projected):
    columns = slice(8 * i, 8 * (i + 1)) if untie else slice(0, 8)
    expected = encoded @ kernel[:, columns] + bias[columns]
    np.testing.assert_allclose(projected, expected, rtol=0, atol=1e-5)
  if not untie:
    np.testing.assert_array_equal(out.projected[0], out.projected[1])
  np.testing.assert_array_equal(out.label_embeddings[0], params["label_embs_concat"][:500])
  np.testing.assert_array_equal(out.label_embeddings[1], params["label_embs_concat"][500:])
  np.testing.assert_array_equal(
    out.frame_paddings[1], np.arange(frames) >= frontends.num_frames(900, SMALL["conv_layers"])
  )
  assert out.feature_penalty.shape == ()

  # fairseq's initialisation: label embeddings torch uniform_, U[0, 1); final_proj as
  # nn.Linear, U(+-1/sqrt(fan_in)).
  embeddings = params["label_embs_concat"]
  assert embeddings.min() >= 0 and embeddings.max() < 1 and 0.45 < embeddings.mean() < 0.55
  bound = 1 / np.sqrt(24)
  assert bound >= np.abs(kernel).max() > 0.9 * bound


def test_backbone_parameters_are_wav2vec2s():
  """Same names and shapes as Wav2Vec2's shared path: checkpoints move between the two."""
  hubert_shapes = model_types.param_shapes(common.hubert_model(**SMALL))
  wav2vec2_shapes = model_types.param_shapes(common.wav2vec2_model(**SMALL))
  hubert_head = {p for p in hubert_shapes if p.split("/")[0] in ("final_proj", "label_embs_concat")}
  wav2vec2_head = {
    p for p in wav2vec2_shapes if p.split("/")[0] in ("final_proj", "project_q", "quantizer")
  }
  assert hubert_head == {"final_proj/kernel", "final_proj/bias", "label_embs_concat"}
  backbone = {p: s for p, s in hubert_shapes.items() if p not in hubert_head}
  assert backbone == {p: s for p, s in wav2vec2_shapes.items() if p not in wav2vec2_head}


def _fairseq_masked_loss(encoded_BxFxD, kernel, bias, label_embs, num_classes, selected, units):
  """fairseq's HuBERT masked-prediction loss in float64, summed (not yet / sample_size).

  `fairseq/models/hubert/hubert.py`: final_proj of the encoder output at masked, unpadded
  frames (`x[masked_indices]`), chunked per label set (untie_final_proj); `compute_nce`
  logits cos(proj, [embedding of the frame's cluster, every cluster's embedding]) / 0.1
  with a negative equal to the positive at -inf; `hubert_criterion`: cross-entropy
  against index 0, summed over frames and label sets (pred_masked_weight 1).
  """
  x_NxD = encoded_BxFxD[selected]
  projected_NxW = x_NxD @ kernel + bias
  starts = np.cumsum(num_classes)[:-1]
  total = 0.0
  for i, (projected_NxP, embs_KxP) in enumerate(
    zip(
      np.split(projected_NxW, len(num_classes), axis=-1),
      np.split(label_embs, starts),
      strict=True,
    )
  ):
    labels_N = units[i][selected]
    unit_p = projected_NxP / np.maximum(np.linalg.norm(projected_NxP, axis=-1, keepdims=True), 1e-8)
    unit_e = embs_KxP / np.maximum(np.linalg.norm(embs_KxP, axis=-1, keepdims=True), 1e-8)
    cosine_NxK = unit_p @ unit_e.T / 0.1
    positive_N = cosine_NxK[np.arange(len(labels_N)), labels_N]
    neg_is_pos_NxK = np.all(embs_KxP[None, :, :] == embs_KxP[labels_N][:, None, :], axis=-1)
    negatives_NxK = np.where(neg_is_pos_NxK, -np.inf, cosine_NxK)
    logits_NxC = np.concatenate([positive_N[:, None], negatives_NxK], axis=1)
    top_N = logits_NxC.max(-1)
    lse_N = top_N + np.log(np.exp(logits_NxC - top_N[:, None]).sum(-1))
    total += np.sum(lse_N - positive_N)
  return total


def test_loss_and_head_gradients_match_fairseq_reference():
  """The objective on the model's output against fairseq's loss in float64 from the
  encoder output; head gradients against its central differences (h = 1e-5), loss to
  rtol 1e-5, gradients to rtol 1e-4 plus atol 1e-5 · max|gradient|; the backbone gets a
  finite, non-zero gradient everywhere."""
  num_classes = (5, 7)
  no_dropout = dict(dropout=0.0, attention_dropout=0.0, dropout_input=0.0, layerdrop=0.0)
  model_config = common.hubert_model(**SMALL, num_classes=num_classes, **no_dropout)
  params = model_types.init_params(model_config, seed=2)
  audio_BxS, paddings_BxS, mask_BxF = _batch()
  rng = np.random.default_rng(1)
  units = [rng.integers(0, k, size=mask_BxF.shape) for k in num_classes]
  model = hubert.HuBERT(**model_config)

  def forward(params):
    return model.apply(
      {"params": params},
      audio_BxS,
      paddings_BxS,
      mask_BxF,
      train=True,
      return_hidden_states=True,
      rngs={"dropout": jax.random.key(0)},
    )

  def loss_fn(params):
    loss, sums = objective.hubert_loss(
      forward(params),
      mask_BxF,
      units,
      logit_temp=0.1,
      pred_masked_weight=1.0,
      pred_nomask_weight=0.0,
      feature_penalty_weight=10.0,
    )
    return loss / sums["sample_size"]

  out = jax.jit(forward)(params)
  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
  encoded = np.asarray(out.hidden_states[-1], np.float64)
  selected = mask_BxF & (np.asarray(out.frame_paddings) == 0)
  penalty = float(out.feature_penalty)
  head = {
    "kernel": np.asarray(params["final_proj"]["kernel"], np.float64),
    "bias": np.asarray(params["final_proj"]["bias"], np.float64),
    "label_embs": np.asarray(params["label_embs_concat"], np.float64),
  }

  def reference(**changed):
    h = dict(head, **changed)
    nll = _fairseq_masked_loss(
      encoded, h["kernel"], h["bias"], h["label_embs"], num_classes, selected, units
    )
    sample_size = selected.sum()  # fairseq's target_m numel: masked frames of label set 0
    return (nll + 10.0 * penalty * sample_size) / sample_size

  np.testing.assert_allclose(float(loss), reference(), rtol=1e-5)
  for name, grad in (
    ("kernel", grads["final_proj"]["kernel"]),
    ("bias", grads["final_proj"]["bias"]),
    ("label_embs", grads["label_embs_concat"]),
  ):
    expected = np.zeros_like(head[name])
    for i in np.ndindex(expected.shape):
      up, down = head[name].copy(), head[name].copy()
      up[i] += 1e-5
      down[i] -= 1e-5
      expected[i] = (reference(**{name: up}) - reference(**{name: down})) / 2e-5
    atol = 1e-5 * np.abs(expected).max()
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=atol, err_msg=name)

  flat = flax.traverse_util.flatten_dict(grads, sep="/")
  assert all(np.all(np.isfinite(g)) for g in flat.values())
  assert [p for p, g in flat.items() if not np.any(np.asarray(g))] == []
