"""Tests for sslax.models.frontends: frame counts and padding invariance."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from sslax.models import frontends

SMALL_LAYERS = ((8, 10, 5), (8, 3, 2), (8, 2, 2))


def test_num_frames_standard_stack_320f_plus_80():
  for frames in (0, 1, 2, 49, 250, 781, 1000):
    assert frontends.num_frames(320 * frames + 80, common.WAV2VEC2_CONV_LAYERS) == frames
  # One sample fewer loses the last frame.
  assert frontends.num_frames(320 * 50 + 79, common.WAV2VEC2_CONV_LAYERS) == 49
  assert frontends.num_frames(0, common.WAV2VEC2_CONV_LAYERS) == 0


def test_num_frames_types_agree():
  lengths = np.arange(0, 3000, 7)
  expected = [frontends.num_frames(int(n), common.WAV2VEC2_CONV_LAYERS) for n in lengths]
  assert all(type(e) is int for e in expected)
  np.testing.assert_array_equal(
    frontends.num_frames(lengths, common.WAV2VEC2_CONV_LAYERS), expected
  )
  from_jax = jax.jit(lambda n: frontends.num_frames(n, common.WAV2VEC2_CONV_LAYERS))(
    jnp.asarray(lengths, jnp.int32)
  )
  np.testing.assert_array_equal(np.asarray(from_jax), expected)


@pytest.mark.parametrize("conv_layers", [SMALL_LAYERS, common.WAV2VEC2_CONV_LAYERS])
def test_num_frames_matches_conv_output_length(conv_layers):
  module = frontends.WaveformFrontend(conv_layers, "layer_norm", conv_bias=True)
  audio = jnp.zeros((1, 2000))
  variables = jax.eval_shape(lambda: module.init(jax.random.key(0), audio, audio))
  receptive_field = 400  # samples under one frame of the standard stack
  lengths = [1, 9, 10, 11, 14, 15, 16, 19, 20, 21, 24, 25, 26]
  lengths += [receptive_field + d for d in (-1, 0, 1, 319, 320, 321, 640)]
  lengths += np.random.default_rng(0).integers(1, 5000, size=20).tolist()
  for num_samples in lengths:
    audio = jax.ShapeDtypeStruct((1, num_samples), jnp.float32)
    features, paddings = jax.eval_shape(module.apply, variables, audio, audio)
    frames = frontends.num_frames(num_samples, conv_layers)
    assert features.shape[1] == frames, num_samples
    assert paddings.shape == (1, frames)


def _pad(audio_S, total):
  audio = np.zeros((total,), np.float32)
  audio[: audio_S.shape[0]] = audio_S
  paddings = np.ones((total,), np.float32)
  paddings[: audio_S.shape[0]] = 0.0
  return audio, paddings


@pytest.mark.parametrize("mode", ["group_norm", "layer_norm"])
def test_padded_batch_equals_unpadded_utterance(mode):
  rng = np.random.default_rng(0)
  short = rng.normal(size=(437,)).astype(np.float32)
  long = rng.normal(size=(900,)).astype(np.float32)
  audio_0, pad_0 = _pad(short, 900)
  # Garbage in the padded region must not leak into valid frames.
  audio_0[437:] = 100.0
  audio_BxS = np.stack([audio_0, long])
  paddings_BxS = np.stack([pad_0, np.zeros(900, np.float32)])

  module = frontends.WaveformFrontend(SMALL_LAYERS, mode, conv_bias=mode == "layer_norm")
  variables = jax.jit(module.init)(jax.random.key(1), audio_BxS, paddings_BxS)
  apply = jax.jit(module.apply)
  feats_BxFxC, frame_pad_BxF = apply(variables, audio_BxS, paddings_BxS)
  alone_1xFxC, alone_pad = apply(variables, short[None], np.zeros((1, 437), np.float32))

  frames = frontends.num_frames(437, SMALL_LAYERS)
  assert alone_1xFxC.shape[1] == frames
  np.testing.assert_array_equal(alone_pad, 0.0)
  expected_pad = (np.arange(feats_BxFxC.shape[1]) >= frames).astype(np.float32)
  np.testing.assert_array_equal(frame_pad_BxF[0], expected_pad)
  np.testing.assert_array_equal(frame_pad_BxF[1], 0.0)
  np.testing.assert_allclose(feats_BxFxC[0, :frames], alone_1xFxC[0], atol=1e-5, rtol=1e-5)
  np.testing.assert_array_equal(feats_BxFxC[0, frames:], 0.0)


def test_group_norm_statistics_use_valid_frames_only():
  x_BxFxC = np.random.default_rng(2).normal(size=(1, 12, 3)).astype(np.float32)
  paddings_BxF = np.zeros((1, 12), np.float32)
  paddings_BxF[0, 7:] = 1.0
  norm = frontends.MaskedGroupNorm()
  variables = norm.init(jax.random.key(0), x_BxFxC, paddings_BxF)
  y = np.asarray(norm.apply(variables, x_BxFxC, paddings_BxF))
  valid = x_BxFxC[0, :7].astype(np.float64)
  expected = (valid - valid.mean(0)) / np.sqrt(valid.var(0) + frontends.NORM_EPSILON)
  np.testing.assert_allclose(y[0, :7], expected, atol=1e-5)


def test_layout_and_logical_names():
  module = frontends.WaveformFrontend(SMALL_LAYERS, "group_norm")
  audio = jnp.zeros((1, 400))
  variables = module.init(jax.random.key(0), audio, audio)
  names = nn.get_partition_spec(variables)["params"]
  assert tuple(names["conv_1"]["kernel"]) == ("conv", None, "embed")
  assert tuple(names["norm_0"]["scale"]) == ("embed",)
  assert set(variables["params"]) == {"conv_0", "conv_1", "conv_2", "norm_0"}
  assert "bias" not in variables["params"]["conv_0"]
