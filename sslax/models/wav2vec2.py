"""wav2vec 2.0 pretraining model (fairseq `fairseq/models/wav2vec/wav2vec2.py`, Wav2Vec2Model).

conv features -> feature_grad_mult -> feature penalty -> LayerNorm -> (a) dropout_features
-> quantizer -> project_q = targets; (b) post_extract_proj -> dropout_input -> mask_emb at
masked frames -> Transformer -> final_proj = projected. The contrastive objective
(sslax/objectives) compares `projected` with `targets` at masked frames.

Attributes are exactly the fields of `config.model` (configs/common.py) plus `dtype` and
`param_dtype`, so a trainer builds `Wav2Vec2(**config.model, dtype=...)`. Parameter counts
equal Hugging Face `Wav2Vec2ForPreTraining`: Base 95,044,608, Large 317,390,592.
"""

from collections.abc import Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from sslax.models import frontends, quantizers, transformer


@flax.struct.dataclass
class Wav2Vec2Output:
  """Outputs of a wav2vec 2.0 forward pass (all frames; the objective selects masked ones).

  Attributes:
    projected: f32[B, F, final_dim] final_proj of the encoder output.
    targets: f32[B, F, final_dim] project_q of the quantized unmasked features.
    frame_paddings: f32[B, F], 1.0 at padding.
    feature_penalty: f32[] mean of squared conv features over unpadded frames and channels.
    prob_perplexity: f32[] quantizer softmax perplexity over masked, unpadded frames.
    code_perplexity: f32[] quantizer code perplexity over masked, unpadded frames.
    num_codevectors: G * V (python int).
    hidden_states: with `return_hidden_states`, the encoder's num_layers + 1 hidden states
      ([B, F, embed_dim] each, `TransformerEncoder(return_all_layers=True)`); else None.
  """

  projected: jax.Array
  targets: jax.Array
  frame_paddings: jax.Array
  feature_penalty: jax.Array
  prob_perplexity: jax.Array
  code_perplexity: jax.Array
  num_codevectors: int = flax.struct.field(pytree_node=False)
  hidden_states: list[jax.Array] | None = None


def _torch_linear_init(names: tuple[str | None, ...]):
  # PyTorch nn.Linear's default, U(+-1/sqrt(fan_in)), used by fairseq for the projections
  # outside the Transformer.
  return nn.with_logical_partitioning(
    nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"), names
  )


class Wav2Vec2(nn.Module):
  """wav2vec 2.0 (Baevski et al. 2020) as fairseq publishes it; fields as `config.model`."""

  conv_layers: Sequence[tuple[int, int, int]]
  extractor_mode: str
  conv_bias: bool
  embed_dim: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  layer_norm_first: bool
  pos_conv_kernel: int
  pos_conv_groups: int
  dropout: float
  attention_dropout: float
  activation_dropout: float
  dropout_input: float
  dropout_features: float
  layerdrop: float
  feature_grad_mult: float
  final_dim: int
  latent_vars: int
  latent_groups: int
  latent_dim: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def _dense(self, features: int, names: tuple[str | None, ...], name: str) -> nn.Dense:
    return nn.Dense(
      features,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=_torch_linear_init(names),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names[-1:]),
      name=name,
    )

  @nn.compact
  def __call__(
    self,
    audio_BxS: jax.Array,
    audio_paddings_BxS: jax.Array,
    mask_BxF: jax.Array,
    *,
    train: bool,
    gumbel_temperature,
    return_hidden_states: bool = False,
  ) -> Wav2Vec2Output:
    """Runs the pretraining model.

    Args:
      audio_BxS: f32[B, S] 16 kHz waveform, right-padded.
      audio_paddings_BxS: f32[B, S], 1.0 at padding.
      mask_BxF: bool[B, F] frames to mask, F = frontends.num_frames(S, conv_layers).
      train: dropout, layerdrop and Gumbel sampling ('dropout', 'gumbel' rngs) when True.
      gumbel_temperature: Gumbel-softmax temperature for this step (scalar).
      return_hidden_states: also return every encoder layer's hidden state (feature
        extraction, Hugging Face parity).

    Returns:
      Wav2Vec2Output.
    """
    deterministic = not train
    features_BxFxC, frame_paddings_BxF = frontends.WaveformFrontend(
      self.conv_layers,
      self.extractor_mode,
      self.conv_bias,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="frontend",
    )(audio_BxS, audio_paddings_BxS)
    # fairseq GradMultiply: identity forward, gradient into the extractor scaled by m
    # (m = 0 freezes it). Written so the forward value is exactly the features.
    frozen_BxFxC = jax.lax.stop_gradient(features_BxFxC)
    features_BxFxC = frozen_BxFxC + self.feature_grad_mult * (features_BxFxC - frozen_BxFxC)

    valid_BxF = 1.0 - frame_paddings_BxF
    channels = features_BxFxC.shape[-1]
    squares = jnp.sum(jnp.square(features_BxFxC.astype(jnp.float32)) * valid_BxF[:, :, None])
    feature_penalty = squares / jnp.maximum(jnp.sum(valid_BxF) * channels, 1.0)

    features_BxFxC = transformer.layer_norm(
      features_BxFxC, "feature_norm", self.dtype, self.param_dtype
    )
    unmasked_BxFxC = nn.Dropout(self.dropout_features)(features_BxFxC, deterministic=deterministic)
    # fairseq has post_extract_proj only when the widths differ.
    x_BxFxD = features_BxFxC
    if channels != self.embed_dim:
      x_BxFxD = self._dense(self.embed_dim, (None, "embed"), "post_extract_proj")(x_BxFxD)
    x_BxFxD = nn.Dropout(self.dropout_input)(x_BxFxD, deterministic=deterministic)
    mask_emb_D = self.param(
      "mask_emb",
      nn.with_logical_partitioning(nn.initializers.uniform(scale=1.0), ("embed",)),
      (self.embed_dim,),
      self.param_dtype,
    )
    x_BxFxD = jnp.where(mask_BxF[:, :, None], mask_emb_D.astype(self.dtype), x_BxFxD)
    x_BxFxD = nn.with_logical_constraint(x_BxFxD, ("batch", "time", "embed"))

    x_BxFxD, hidden_states = transformer.TransformerEncoder(
      self.num_layers,
      self.num_heads,
      self.mlp_dim,
      self.layer_norm_first,
      self.pos_conv_kernel,
      self.pos_conv_groups,
      self.dropout,
      self.attention_dropout,
      self.activation_dropout,
      self.layerdrop,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="encoder",
    )(x_BxFxD, frame_paddings_BxF, deterministic=deterministic, return_all_layers=True)
    projected_BxFxP = self._dense(self.final_dim, ("embed", None), "final_proj")(x_BxFxD)

    vq_dim = self.latent_dim if self.latent_dim > 0 else self.final_dim
    quantized = quantizers.GumbelProductQuantizer(
      self.latent_groups,
      self.latent_vars,
      vq_dim,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="quantizer",
    )(
      unmasked_BxFxC,
      jnp.logical_and(mask_BxF, valid_BxF > 0),
      deterministic=deterministic,
      temperature=gumbel_temperature,
    )
    targets_BxFxP = self._dense(self.final_dim, (None, None), "project_q")(quantized.quantized)

    return Wav2Vec2Output(
      projected=projected_BxFxP.astype(jnp.float32),
      targets=targets_BxFxP.astype(jnp.float32),
      frame_paddings=frame_paddings_BxF,
      feature_penalty=feature_penalty,
      prob_perplexity=quantized.prob_perplexity,
      code_perplexity=quantized.code_perplexity,
      num_codevectors=quantized.num_codevectors,
      hidden_states=hidden_states if return_hidden_states else None,
    )
