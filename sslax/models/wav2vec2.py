"""wav2vec 2.0 pretraining model (fairseq `fairseq/models/wav2vec/wav2vec2.py`, Wav2Vec2Model).

conv features -> feature_grad_mult -> feature penalty -> LayerNorm -> (a) dropout_features
-> quantizer -> project_q = targets; (b) post_extract_proj -> dropout_input -> mask_emb at
masked frames -> Transformer -> final_proj = projected. The contrastive objective
(sslax/objectives) compares `projected` with `targets` at masked frames.

Attributes are exactly the fields of `config.model` (configs/common.py) plus `dtype` and
`param_dtype`, so a trainer builds `Wav2Vec2(**config.model, dtype=...)`. Parameter counts
equal Hugging Face `Wav2Vec2ForPreTraining`: Base 95,044,608, Large 317,390,592.
"""

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from sslax.models import backbone, quantizers


@flax.struct.dataclass
class Wav2Vec2Output:
  """Outputs of a wav2vec 2.0 forward pass (all frames; the objective selects masked ones).

  Attributes:
    projected: f32[B, F, final_dim] final_proj of the encoder output.
    targets: f32[B, F, final_dim] project_q of the quantized unmasked features.
    frame_paddings: f32[B, F], 1.0 at padding.
    feature_penalty: f32[] mean of squared conv features over unpadded frames and channels.
    prob_sums: f32[B, G, V] per utterance, the quantizer's softmax summed over its masked,
      unpadded frames (`quantizers.QuantizerOutput`); the objective turns the sums of
      each data-parallel shard into fairseq's `prob_perplexity`.
    code_counts: f32[B, G, V] the same for the hard (argmax) codes: `code_perplexity`.
    quantized_frames: f32[B] masked, unpadded frames per utterance (the sums' frames).
    num_codevectors: G * V (python int).
    hidden_states: with `return_hidden_states`, the encoder's num_layers + 1 hidden states
      ([B, F, embed_dim] each, `TransformerEncoder(return_all_layers=True)`); else None.
  """

  projected: jax.Array
  targets: jax.Array
  frame_paddings: jax.Array
  feature_penalty: jax.Array
  prob_sums: jax.Array
  code_counts: jax.Array
  quantized_frames: jax.Array
  num_codevectors: int = flax.struct.field(pytree_node=False)
  hidden_states: list[jax.Array] | None = None


class Wav2Vec2(backbone.Backbone, kw_only=True):
  """wav2vec 2.0 (Baevski et al. 2020) as fairseq publishes it; fields as `config.model`."""

  dropout_features: float
  final_dim: int
  latent_vars: int
  latent_groups: int
  latent_dim: int

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
      mask_BxF: bool[B, F] frames to mask, F = backbone.num_frames(S, self).
      train: dropout, layerdrop and Gumbel sampling ('dropout', 'gumbel' rngs) when True.
      gumbel_temperature: Gumbel-softmax temperature for this step (scalar).
      return_hidden_states: also return every encoder layer's hidden state (feature
        extraction, Hugging Face parity).

    Returns:
      Wav2Vec2Output.
    """
    deterministic = not train
    shared = self.encode(audio_BxS, audio_paddings_BxS, mask_BxF, deterministic=deterministic)
    projected_BxFxP = self.dense(self.final_dim, ("embed", None), "final_proj")(shared.encoded)

    unmasked_BxFxC = nn.Dropout(self.dropout_features)(shared.features, deterministic=deterministic)
    valid_BxF = 1.0 - shared.frame_paddings
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
    targets_BxFxP = self.dense(self.final_dim, (None, None), "project_q")(quantized.quantized)

    return Wav2Vec2Output(
      projected=projected_BxFxP.astype(jnp.float32),
      targets=targets_BxFxP.astype(jnp.float32),
      frame_paddings=shared.frame_paddings,
      feature_penalty=shared.feature_penalty,
      prob_sums=quantized.prob_sums,
      code_counts=quantized.code_counts,
      quantized_frames=quantized.counted_frames,
      num_codevectors=quantized.num_codevectors,
      hidden_states=shared.hidden_states if return_hidden_states else None,
    )
