"""HuBERT pretraining model (fairseq `fairseq/models/hubert/hubert.py`, HubertModel).

The wav2vec 2.0 backbone (sslax/models/backbone.py: conv features -> feature penalty ->
LayerNorm -> post_extract_proj -> mask_emb at masked frames -> Transformer), then
`final_proj` to `final_dim` and one learned embedding per cluster of every label set
(`label_embs_concat`, fairseq's name). The objective (sslax/objectives/hubert.py) scores
each frame against every cluster: logits = cos(projected, label_embedding[k]) / logit_temp.

With several label sets (`num_classes` with several entries, e.g. k-means of two feature
sources) and `untie_final_proj`, final_proj is one Dense of width final_dim * L whose
L slices project for the L sets (fairseq's chunk); tied, all sets share one final_dim
projection. Unlike fairseq, which projects masked and unmasked frames separately after
gathering them, every frame is projected and the objective selects frames by mask.

Attributes are exactly the fields of `config.model` (configs/common.py `hubert_model()`)
plus `dtype` and `param_dtype`. Parameter counts without the head equal Hugging Face
`HubertModel`: Base 94,371,712, Large 315,435,136 (tests/test_hubert_interop.py).
"""

from collections.abc import Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from sslax.models import backbone


@flax.struct.dataclass
class HuBERTOutput:
  """Outputs of a HuBERT forward pass (all frames; the objective selects by mask).

  Attributes:
    projected: per label set, f32[B, F, final_dim] final_proj of the encoder output (its
      slice of the untied projection).
    label_embeddings: per label set i, f32[num_classes[i], final_dim] cluster embeddings.
    frame_paddings: f32[B, F], 1.0 at padding.
    feature_penalty: f32[] mean of squared conv features over unpadded frames and channels.
    hidden_states: with `return_hidden_states`, the encoder's num_layers + 1 hidden states
      ([B, F, embed_dim] each, as Hugging Face's `output_hidden_states`); else None.
  """

  projected: tuple[jax.Array, ...]
  label_embeddings: tuple[jax.Array, ...]
  frame_paddings: jax.Array
  feature_penalty: jax.Array
  hidden_states: list[jax.Array] | None = None


class HuBERT(backbone.Backbone, kw_only=True):
  """HuBERT (Hsu et al. 2021) as fairseq publishes it; fields as `config.model`."""

  final_dim: int
  num_classes: Sequence[int]
  untie_final_proj: bool

  @nn.compact
  def __call__(
    self,
    audio_BxS: jax.Array,
    audio_paddings_BxS: jax.Array,
    mask_BxF: jax.Array,
    *,
    train: bool,
    return_hidden_states: bool = False,
  ) -> HuBERTOutput:
    """Runs the pretraining model.

    Args:
      audio_BxS: f32[B, S] 16 kHz waveform, right-padded.
      audio_paddings_BxS: f32[B, S], 1.0 at padding.
      mask_BxF: bool[B, F] frames to mask, F = backbone.num_frames(S, self).
      train: dropout and layerdrop ('dropout' rng) when True.
      return_hidden_states: also return every encoder layer's hidden state (feature
        extraction, Hugging Face parity).

    Returns:
      HuBERTOutput.
    """
    shared = self.encode(audio_BxS, audio_paddings_BxS, mask_BxF, deterministic=not train)
    num_sets = len(self.num_classes)
    width = self.final_dim * num_sets if self.untie_final_proj else self.final_dim
    projected_BxFxW = self.dense(width, ("embed", None), "final_proj")(shared.encoded)
    projected_BxFxW = projected_BxFxW.astype(jnp.float32)
    if self.untie_final_proj:
      projected = tuple(jnp.split(projected_BxFxW, num_sets, axis=-1))
    else:
      projected = (projected_BxFxW,) * num_sets

    # torch's uniform_ on label_embs_concat: U[0, 1).
    label_embs_NxP = self.param(
      "label_embs_concat",
      nn.with_logical_partitioning(nn.initializers.uniform(scale=1.0), ("vocab", None)),
      (sum(self.num_classes), self.final_dim),
      self.param_dtype,
    )
    starts = np.cumsum(self.num_classes)[:-1].tolist()
    label_embeddings = tuple(jnp.split(label_embs_NxP.astype(jnp.float32), starts, axis=0))

    return HuBERTOutput(
      projected=projected,
      label_embeddings=label_embeddings,
      frame_paddings=shared.frame_paddings,
      feature_penalty=shared.feature_penalty,
      hidden_states=shared.hidden_states if return_hidden_states else None,
    )
