"""wav2vec 2.0 with a linear CTC head (fairseq `Wav2VecCtc`, transformers `Wav2Vec2ForCTC`).

The shared path (`backbone.Backbone`: conv features -> LayerNorm -> post_extract_proj ->
time mask (mask_emb) and channel mask -> Transformer) keeps the pretraining model's
parameter names, so a pretrained checkpoint loads as is; then dropout (`final_dropout`)
and `lm_head`, a Dense to the vocabulary, initialised as fairseq's `Linear` (Xavier-uniform
kernel, zero bias). The pretraining-only parts (quantizer, project_q, final_proj) are absent.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from sslax.models import backbone


class Wav2Vec2ForCTC(backbone.Backbone, kw_only=True):
  """Backbone fields (`config.model`) plus `final_dropout` and the vocabulary size."""

  final_dropout: float
  vocab_size: int

  @nn.compact
  def __call__(
    self,
    audio_BxS: jax.Array,
    audio_paddings_BxS: jax.Array,
    mask_BxF: jax.Array | None = None,
    channel_mask_BxD: jax.Array | None = None,
    *,
    train: bool,
  ) -> tuple[jax.Array, jax.Array]:
    """Frame-level vocabulary logits.

    Args:
      audio_BxS: f32[B, S] 16 kHz waveform, right-padded.
      audio_paddings_BxS: f32[B, S], 1.0 at padding.
      mask_BxF: bool[B, F] frames replaced by the mask embedding (fine-tuning's time
        mask), F = backbone.num_frames(S, self); None masks nothing.
      channel_mask_BxD: bool[B, embed_dim] channels zeroed at every frame; None: none.
      train: dropout and layerdrop ('dropout' rng) when True.

    Returns:
      (logits f32[B, F, vocab_size], frame_paddings f32[B, F] with 1.0 at padding).
    """
    deterministic = not train
    shared = self.encode(
      audio_BxS,
      audio_paddings_BxS,
      mask_BxF,
      deterministic=deterministic,
      channel_mask_BxD=channel_mask_BxD,
    )
    x_BxFxD = nn.Dropout(self.final_dropout)(shared.encoded, deterministic=deterministic)
    logits_BxFxV = nn.Dense(
      self.vocab_size,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=nn.with_logical_partitioning(
        nn.initializers.xavier_uniform(), ("embed", "vocab")
      ),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
      name="lm_head",
    )(x_BxFxD)
    logits_BxFxV = nn.with_logical_constraint(logits_BxFxV, ("batch", "time", "vocab"))
    return logits_BxFxV.astype(jnp.float32), shared.frame_paddings
