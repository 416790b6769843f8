"""Tests for sslax.models.random_projection against a float64 numpy reference."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sslax.models import random_projection, spectrogram

SMALL = dict(num_codebooks=4, codebook_size=64, codebook_dim=8, stack=4)


def _reference(features_BxTxC, paddings_BxT, projection_GxIxK, codebooks_GxVxK, stack):
  """Targets and, per target, the gap between the two smallest distances (float64)."""
  x = np.asarray(features_BxTxC, np.float64)
  valid = 1.0 - np.asarray(paddings_BxT, np.float64)
  batch, frames, channels = x.shape
  groups = -(-frames // stack)
  stacked = np.zeros((batch, groups * stack, channels))
  for b in range(batch):
    n = int(valid[b].sum())
    utterance = x[b, :n]
    stacked[b, :n] = (utterance - utterance.mean(0)) / np.sqrt(
      utterance.var(0) + random_projection.NORM_EPSILON
    )
  stacked = stacked.reshape(batch, groups, stack * channels)
  projected = np.einsum("bni,gik->bngk", stacked, np.asarray(projection_GxIxK, np.float64))
  # Padded stacked frames are all zero; they are not compared.
  projected /= np.maximum(np.linalg.norm(projected, axis=-1, keepdims=True), 1e-30)
  codebooks = np.asarray(codebooks_GxVxK, np.float64)
  codebooks = codebooks / np.linalg.norm(codebooks, axis=-1, keepdims=True)
  distances = np.linalg.norm(projected[:, :, :, None, :] - codebooks[None, None], axis=-1)
  ordered = np.sort(distances, axis=-1)
  return np.argmin(distances, axis=-1), ordered[..., 1] - ordered[..., 0]


def _batch(lengths=(37, 22), channels=10, seed=0):
  rng = np.random.default_rng(seed)
  features_BxTxC = rng.normal(size=(len(lengths), max(lengths), channels)).astype(np.float32)
  features_BxTxC += rng.normal(size=(1, 1, channels)).astype(np.float32) * 3.0
  paddings_BxT = (np.arange(max(lengths))[None, :] >= np.asarray(lengths)[:, None]).astype(
    np.float32
  )
  features_BxTxC[paddings_BxT > 0] = 1e4  # garbage the quantizer must ignore
  return features_BxTxC, paddings_BxT


def test_targets_match_numpy_nearest_codeword():
  features_BxTxC, paddings_BxT = _batch()
  quantizer = random_projection.RandomProjectionQuantizer(**SMALL)
  variables = quantizer.init(jax.random.key(0), features_BxTxC, paddings_BxT)
  frozen = nn.unbox(variables)[random_projection.FROZEN]
  targets_BxNxG, paddings_BxN = jax.jit(quantizer.apply)(variables, features_BxTxC, paddings_BxT)
  expected, gaps = _reference(
    features_BxTxC, paddings_BxT, frozen["projection"], frozen["codebooks"], SMALL["stack"]
  )
  assert targets_BxNxG.shape == (2, 10, 4) and targets_BxNxG.dtype == jnp.int32
  np.testing.assert_array_equal(paddings_BxN[0], 0.0)
  np.testing.assert_array_equal(paddings_BxN[1], np.arange(10) >= 6)  # ceil(22 / 4)
  valid = np.asarray(paddings_BxN) == 0
  # float32 could only pick another codeword where two are within rounding of each other.
  assert gaps[valid].min() > 1e-5
  np.testing.assert_array_equal(np.asarray(targets_BxNxG)[valid], expected[valid])
  assert len(np.unique(expected[valid])) > 20  # the test sees many codewords


def test_projection_and_codebooks_are_frozen_seeded_and_initialised_as_the_paper():
  features_BxTxC, paddings_BxT = _batch()
  quantizer = random_projection.RandomProjectionQuantizer(**SMALL)
  variables = quantizer.init(jax.random.key(0), features_BxTxC, paddings_BxT)
  assert set(variables) == {random_projection.FROZEN}  # nothing in 'params'
  specs = nn.get_partition_spec(variables)[random_projection.FROZEN]
  assert tuple(specs["projection"]) == ("codebook", None, None)
  assert tuple(specs["codebooks"]) == ("codebook", "vocab", None)
  frozen = nn.unbox(variables)[random_projection.FROZEN]
  # The fixed seed, not the init rng, decides them.
  again = nn.unbox(quantizer.init(jax.random.key(7), features_BxTxC, paddings_BxT))
  jax.tree.map(np.testing.assert_array_equal, frozen, again[random_projection.FROZEN])
  other = random_projection.RandomProjectionQuantizer(**SMALL, seed=1)
  other_frozen = nn.unbox(other.init(jax.random.key(0), features_BxTxC, paddings_BxT))
  assert not np.array_equal(
    frozen["codebooks"], other_frozen[random_projection.FROZEN]["codebooks"]
  )
  codebooks = np.asarray(frozen["codebooks"], np.float64)
  assert codebooks.shape == (4, 64, 8)
  np.testing.assert_allclose(np.linalg.norm(codebooks, axis=-1), 1.0, atol=1e-6)
  projection = np.asarray(frozen["projection"], np.float64)
  assert projection.shape == (4, 40, 8)
  bound = np.sqrt(6.0 / (40 + 8))  # Xavier uniform, per codebook
  assert np.abs(projection).max() <= bound
  np.testing.assert_allclose(projection.var(), bound**2 / 3.0, rtol=0.15)
  # Different codebooks get different draws.
  assert not np.allclose(projection[0], projection[1])
  # The paper's sizes, without allocating them.
  paper = jax.eval_shape(
    lambda: random_projection.RandomProjectionQuantizer().init(
      jax.random.key(0), jnp.zeros((1, 8, 80)), jnp.zeros((1, 8))
    )
  )
  shapes = jax.tree.map(lambda s: s.shape, nn.unbox(paper))[random_projection.FROZEN]
  assert shapes == {"projection": (16, 320, 16), "codebooks": (16, 8192, 16)}


def test_padding_changes_nothing():
  features_BxTxC, paddings_BxT = _batch(lengths=(37, 22), seed=1)
  quantizer = random_projection.RandomProjectionQuantizer(**SMALL)
  variables = quantizer.init(jax.random.key(0), features_BxTxC, paddings_BxT)
  batched, _ = quantizer.apply(variables, features_BxTxC, paddings_BxT)
  alone, alone_paddings = quantizer.apply(
    variables, features_BxTxC[1:, :22], np.zeros((1, 22), np.float32)
  )
  np.testing.assert_array_equal(alone_paddings, 0.0)
  np.testing.assert_array_equal(batched[1, :6], alone[0])


def test_stacked_frames_line_up_with_log_mel_subsampling():
  x_BxTxC = np.arange(2 * 10 * 3, dtype=np.float32).reshape(2, 10, 3)
  paddings_BxT = np.zeros((2, 10), np.float32)
  paddings_BxT[1, 5:] = 1.0
  stacked, stacked_paddings = random_projection.stack_frames(x_BxTxC, paddings_BxT, 4)
  assert stacked.shape == (2, 3, 12)
  np.testing.assert_array_equal(stacked[0, 1], x_BxTxC[0, 4:8].reshape(-1))
  np.testing.assert_array_equal(
    stacked[0, 2], np.concatenate([x_BxTxC[0, 8:].reshape(-1), np.zeros(6)])
  )
  np.testing.assert_array_equal(stacked_paddings, [[0, 0, 0], [0, 0, 1]])
  # n valid 10 ms frames give as many stacked frames as the 4x / 8x front end gives frames.
  for stack in (4, 8):
    for num_samples in (1, 159, 160, 640, 1000, 4799, 4800, 12345):
      mel_frames = spectrogram.num_mel_frames(num_samples)
      paddings = (np.arange(80)[None, :] >= mel_frames).astype(np.float32)
      _, stacked_paddings = random_projection.stack_frames(np.zeros((1, 80, 1)), paddings, stack)
      expected = spectrogram.num_frames(num_samples, subsampling=stack)
      assert int(np.sum(1.0 - stacked_paddings)) == expected, (stack, num_samples)
