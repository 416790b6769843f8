"""BEST-RQ pretraining model (Chiu et al. 2022): the shared backbone plus a multi-softmax head.

audio -> (a) log mel of the unmasked input -> frozen random-projection quantizer
(`random_projection.RandomProjectionQuantizer`) = targets, G codeword indices per frame;
(b) the backbone (any frontend, any encoder) with mask_emb at masked frames -> Dense to
G x V logits. The objective (`sslax/objectives/bestrq.py`) is the cross-entropy of the
logits against the targets at masked frames.

The targets come from `spectrogram.LogMelFrontend.log_mel` at 10 ms whatever the frontend
(`mel_bins` bins, unnormalised: the quantizer normalises per utterance), `target_stack`
frames stacked per target: with the log-mel frontend, stack =
`mel_subsampling` gives exactly one target per encoder frame (the paper's 4 x 10 ms = 40
ms); with the waveform frontend (20 ms frames) stack 2 gives one or two targets more than
frames at the end, which are dropped.

One departure from the paper: masked frames get the backbone's learned `mask_emb` after
post_extract_proj, as in wav2vec 2.0 and HuBERT, where BEST-RQ replaces masked input
frames with noise N(0, 0.1) before the frontend.

Attributes are exactly the fields of `config.model` (configs/common.py `bestrq_model()`)
plus `dtype` and `param_dtype`. Apply with `{'params': ..., 'frozen': ...}` (and
`mutable=['batch_stats']` in training with a batch-norm conformer).
"""

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from sslax.models import backbone, random_projection, spectrogram


@flax.struct.dataclass
class BestRQOutput:
  """Outputs of a BEST-RQ forward pass (all frames; the objective selects masked ones).

  Attributes:
    logits: f32[B, F, G, V] predictions of each codebook's codeword.
    targets: int32[B, F, G] the quantizer's codeword indices of the unmasked input.
    frame_paddings: f32[B, F], 1.0 at padding.
    hidden_states: with `return_hidden_states`, the encoder's num_layers + 1 hidden
      states ([B, F, embed_dim] each); else None.
  """

  logits: jax.Array
  targets: jax.Array
  frame_paddings: jax.Array
  hidden_states: list[jax.Array] | None = None


class BestRQ(backbone.Backbone, kw_only=True):
  """BEST-RQ on the shared backbone; fields as `config.model`."""

  num_codebooks: int
  codebook_size: int
  codebook_dim: int
  target_stack: int
  quantizer_seed: int

  @nn.compact
  def __call__(
    self,
    audio_BxS: jax.Array,
    audio_paddings_BxS: jax.Array,
    mask_BxF: jax.Array,
    *,
    train: bool,
    return_hidden_states: bool = False,
  ) -> BestRQOutput:
    """Runs the pretraining model.

    Args:
      audio_BxS: f32[B, S] 16 kHz waveform, right-padded.
      audio_paddings_BxS: f32[B, S], 1.0 at padding.
      mask_BxF: bool[B, F] frames to mask, F = backbone.num_frames(S, self).
      train: dropout and layerdrop ('dropout' rng), batch statistics, when True.
      return_hidden_states: also return every encoder layer's hidden state.

    Returns:
      BestRQOutput.

    Raises:
      ValueError: naming config.model.target_stack when it gives fewer targets than frames.
    """
    shared = self.encode(audio_BxS, audio_paddings_BxS, mask_BxF, deterministic=not train)
    batch, frames, _ = shared.encoded.shape
    head = self.dense(self.num_codebooks * self.codebook_size, ("embed", "vocab"), "head")
    logits_BxFxGxV = head(shared.encoded).reshape(
      batch, frames, self.num_codebooks, self.codebook_size
    )

    log_mel_BxTxM, mel_paddings_BxT = spectrogram.LogMelFrontend(
      num_mel_bins=self.mel_bins, normalization="none", name="target_features"
    ).log_mel(audio_BxS, audio_paddings_BxS)
    targets_BxNxG, _ = random_projection.RandomProjectionQuantizer(
      self.num_codebooks,
      self.codebook_size,
      self.codebook_dim,
      self.target_stack,
      self.quantizer_seed,
      name="quantizer",
    )(log_mel_BxTxM, mel_paddings_BxT)
    if targets_BxNxG.shape[1] < frames:
      raise ValueError(
        f"config.model.target_stack={self.target_stack} gives {targets_BxNxG.shape[1]} "
        f"targets for {frames} frames; it must not exceed the frame period in 10 ms hops"
      )
    return BestRQOutput(
      logits=logits_BxFxGxV.astype(jnp.float32),
      targets=targets_BxNxG[:, :frames],
      frame_paddings=shared.frame_paddings,
      hidden_states=shared.hidden_states if return_hidden_states else None,
    )
