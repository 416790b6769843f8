"""Waveform front end: fairseq's convolutional feature extractor (wav2vec 2.0, HuBERT).

A stack of 1-D convolutions without padding turns 16 kHz samples into frames; the standard
stack (`configs/common.py`) downsamples 320x, so S = 320 * F + 80 samples give F frames of
20 ms. `num_frames` is the one place that says how many frames a number of samples gives;
the input pipeline and the model both use it.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# fairseq's Fp32GroupNorm / Fp32LayerNorm use PyTorch's default epsilon.
NORM_EPSILON = 1e-5


def num_frames(num_samples, conv_layers: Sequence[tuple[int, int, int]]):
  """Frames produced from `num_samples` samples by unpadded convolutions.

  Args:
    num_samples: sample count; a python int or a numpy / jax integer array (any shape).
    conv_layers: (channels, kernel, stride) per conv layer.

  Returns:
    Frame count of the same kind as `num_samples`: per layer floor((n - k) / s) + 1,
    or 0 when fewer than k inputs remain.
  """
  n = num_samples
  for _, kernel, stride in conv_layers:
    # Multiplying by the comparison clips at 0 for ints and arrays alike, without picking
    # an array library (a python int must stay a python int for static shapes).
    n = (n >= kernel) * ((n - kernel) // stride + 1)
  return n


def frame_paddings(num_valid_B: jax.Array, num_frames_total: int) -> jax.Array:
  """f32[B, F] paddings (1.0 at padding) for utterances of `num_valid_B` valid frames."""
  return (jnp.arange(num_frames_total)[None, :] >= num_valid_B[:, None]).astype(jnp.float32)


class MaskedGroupNorm(nn.Module):
  """GroupNorm with one group per channel whose statistics skip padded frames.

  fairseq normalises each channel over all time steps, padding included, so a padded
  utterance gives different features than the same utterance alone; excluding padding
  makes the output independent of how much padding the batch needed.
  """

  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxFxC: jax.Array, paddings_BxF: jax.Array) -> jax.Array:
    """Normalises f32[B, F, C] per utterance and channel over valid frames; returns f32."""
    channels = x_BxFxC.shape[-1]
    scale_C = self.param(
      "scale",
      nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
      (channels,),
      self.param_dtype,
    )
    bias_C = self.param(
      "bias",
      nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
      (channels,),
      self.param_dtype,
    )
    x_BxFxC = x_BxFxC.astype(jnp.float32)
    valid_BxFx1 = (1.0 - paddings_BxF)[:, :, None]
    count_Bx1x1 = jnp.maximum(jnp.sum(valid_BxFx1, axis=1, keepdims=True), 1.0)
    mean_Bx1xC = jnp.sum(x_BxFxC * valid_BxFx1, axis=1, keepdims=True) / count_Bx1x1
    centred_BxFxC = x_BxFxC - mean_Bx1xC
    var_Bx1xC = jnp.sum(jnp.square(centred_BxFxC) * valid_BxFx1, axis=1, keepdims=True)
    var_Bx1xC = var_Bx1xC / count_Bx1x1
    normed_BxFxC = centred_BxFxC * jax.lax.rsqrt(var_Bx1xC + NORM_EPSILON)
    return normed_BxFxC * scale_C.astype(jnp.float32) + bias_C.astype(jnp.float32)


class WaveformFrontend(nn.Module):
  """fairseq ConvFeatureExtractionModel: conv -> norm -> GELU per layer, padding-aware.

  Attributes:
    conv_layers: (channels, kernel, stride) per layer.
    mode: 'group_norm' (per-channel GroupNorm after the first conv only, wav2vec 2.0
      Base) or 'layer_norm' (LayerNorm over channels after every conv, Large).
    conv_bias: whether the convolutions have a bias.
    dtype: compute dtype of the convolutions; norms run in float32.
    param_dtype: parameter dtype.
  """

  conv_layers: Sequence[tuple[int, int, int]]
  mode: str = "group_norm"
  conv_bias: bool = False
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(
    self, audio_BxS: jax.Array, audio_paddings_BxS: jax.Array
  ) -> tuple[jax.Array, jax.Array]:
    """Computes frame features.

    Args:
      audio_BxS: f32[B, S] waveform samples (16 kHz), right-padded.
      audio_paddings_BxS: f32[B, S], 1.0 at padding.

    Returns:
      features_BxFxC: [B, F, C] in `dtype`, F = num_frames(S), zero at padded frames.
      frame_paddings_BxF: f32[B, F], 1.0 where f >= num_frames(valid samples).
    """
    if self.mode not in ("group_norm", "layer_norm"):
      raise ValueError(f"mode must be 'group_norm' or 'layer_norm', got {self.mode!r}")
    valid_BxS = 1.0 - audio_paddings_BxS.astype(jnp.float32)
    num_samples_B = jnp.round(jnp.sum(valid_BxS, axis=1)).astype(jnp.int32)
    # Zeroed padding means valid frames, which only see valid samples, do not depend on
    # whatever the pipeline put there.
    x_BxTxC = (audio_BxS.astype(jnp.float32) * valid_BxS)[:, :, None].astype(self.dtype)
    for i, (channels, kernel, stride) in enumerate(self.conv_layers):
      x_BxTxC = nn.Conv(
        channels,
        (kernel,),
        strides=(stride,),
        padding="VALID",
        use_bias=self.conv_bias,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        # fairseq: kaiming_normal_ (std sqrt(2 / fan_in)).
        kernel_init=nn.with_logical_partitioning(
          nn.initializers.variance_scaling(2.0, "fan_in", "normal"), ("conv", None, "embed")
        ),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        name=f"conv_{i}",
      )(x_BxTxC)
      if self.mode == "layer_norm":
        x_BxTxC = nn.LayerNorm(
          epsilon=NORM_EPSILON,
          dtype=jnp.float32,
          param_dtype=self.param_dtype,
          scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
          bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
          name=f"norm_{i}",
        )(x_BxTxC.astype(jnp.float32))
      elif i == 0:
        paddings_BxT = frame_paddings(
          num_frames(num_samples_B, self.conv_layers[:1]), x_BxTxC.shape[1]
        )
        x_BxTxC = MaskedGroupNorm(param_dtype=self.param_dtype, name="norm_0")(
          x_BxTxC, paddings_BxT
        )
      x_BxTxC = nn.gelu(x_BxTxC, approximate=False).astype(self.dtype)

    frame_paddings_BxF = frame_paddings(
      num_frames(num_samples_B, self.conv_layers), x_BxTxC.shape[1]
    )
    features_BxFxC = x_BxTxC * (1.0 - frame_paddings_BxF)[:, :, None].astype(self.dtype)
    features_BxFxC = nn.with_logical_constraint(features_BxFxC, ("batch", "time", "embed"))
    return features_BxFxC, frame_paddings_BxF
