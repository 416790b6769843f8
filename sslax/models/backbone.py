"""The part every sslax speech model shares: waveform -> frames -> masked encoder.

fairseq's Wav2Vec2Model and HubertModel, and Hugging Face's `Wav2Vec2Model` (which
`Wav2Vec2ForPreTraining`, `HubertModel` and `Wav2Vec2ForCTC` wrap), run the same path:

  conv features -> feature_grad_mult -> feature penalty -> LayerNorm -> post_extract_proj
  -> dropout_input -> time mask (mask_emb) and channel mask (zeros) -> Transformer.

Two fields swap its ends, so every frontend/encoder pairing is a config change:
`frontend` ('waveform': fairseq's conv stack; 'logmel': `spectrogram.LogMelFrontend`,
log mel + conv2d subsampling) and `encoder` ('transformer'; 'conformer':
`conformer.ConformerEncoder`, whose batch norm keeps running statistics in the
`batch_stats` collection). The defaults are wav2vec 2.0's, so models built without them
have the parameters, names and numbers they always had. `num_frames` says how many frames
either frontend gives; the input pipeline masks with it.

`Backbone` holds its fields and `encode()`; a model subclasses it (`kw_only=True`) and
calls `self.encode(...)` from its compact `__call__`, so the shared parameters keep the
same flat names in every model ('frontend', 'feature_norm', 'post_extract_proj',
'mask_emb', 'encoder') and a pretrained checkpoint loads into a fine-tuning model as is.
"""

from collections.abc import Sequence
import math
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from sslax.models import conformer, frontends, spectrogram, transformer

FRONTENDS = ("waveform", "logmel")
SAMPLE_RATE_HZ = 16_000  # every frontend's input rate
ENCODERS = ("transformer", "conformer")


def num_frames(num_samples, model: Any):
  """Frames the model's frontend gives for `num_samples` samples (int or int array).

  `model` is a `Backbone` (or subclass) or its `config.model` fields: the one function the
  input pipeline (masks, units) and the model agree on, `frontends.num_frames` or
  `spectrogram.num_frames` by `model.frontend`.
  """
  if model.frontend == "waveform":
    return frontends.num_frames(num_samples, tuple(tuple(layer) for layer in model.conv_layers))
  if model.frontend == "logmel":
    return spectrogram.num_frames(num_samples, subsampling=model.mel_subsampling)
  raise ValueError(f"config.model.frontend={model.frontend!r}; expected one of {FRONTENDS}")


def frame_rate_hz(model: Any) -> float:
  """Frames per second of the model's frontend at 16 kHz (`model` as in `num_frames`).

  'waveform': 16,000 / the product of the conv strides (50 Hz for fairseq's stack);
  'logmel': the 100 Hz log-mel frames / `mel_subsampling` (25 Hz at 4x).
  """
  if model.frontend == "waveform":
    return SAMPLE_RATE_HZ / math.prod(stride for _, _, stride in model.conv_layers)
  if model.frontend == "logmel":
    frame_step = spectrogram.LogMelFrontend.frame_step  # the hop `make_frontend` builds with
    return SAMPLE_RATE_HZ / (frame_step * model.mel_subsampling)
  raise ValueError(f"config.model.frontend={model.frontend!r}; expected one of {FRONTENDS}")


def frame_centre_offset(model: Any) -> int:
  """Sample at the centre of frame 0 of the model's frontend; frame t is centred on
  t * 16,000 / frame_rate_hz(model) + this (`model` as in `num_frames`).

  'waveform': unpadded convolutions, so frame t sees the receptive field's R samples
  from t * hop, R = 1 + sum_i (kernel_i - 1) * prod_{j < i} stride_j (400 for fairseq's
  stack): the centre is R // 2 (200, where quality.frame_phones has always put it).
  'logmel': librosa-centred mel frame m is centred on sample m * frame_step (uncentred:
  m * frame_step + frame_length // 2), and each stride-2, kernel-3, padding-1 convolution
  centres output frame j on input frame 2 j, so subsampled frame t sits on mel frame
  t * mel_subsampling: the offset is 0 (frame_length // 2 uncentred).
  """
  if model.frontend == "waveform":
    field, jump = 1, 1
    for _, kernel, stride in model.conv_layers:
      field += (kernel - 1) * jump
      jump *= stride
    return field // 2
  if model.frontend == "logmel":
    mel = spectrogram.LogMelFrontend  # the framing `make_frontend` builds with
    return 0 if mel.center else mel.frame_length // 2
  raise ValueError(f"config.model.frontend={model.frontend!r}; expected one of {FRONTENDS}")


@flax.struct.dataclass
class BackboneOutput:
  """What `Backbone.encode` returns.

  Attributes:
    features: f32[B, F, C] layer-normed conv features before post_extract_proj and any
      masking (the quantizer's input in wav2vec 2.0), in the compute dtype.
    encoded: [B, F, embed_dim] the Transformer's output, in the compute dtype.
    hidden_states: the Transformer's num_layers + 1 hidden states ([B, F, embed_dim]
      each; index 0 is its input) as Hugging Face's `output_hidden_states`.
    frame_paddings: f32[B, F], 1.0 at padding.
    feature_penalty: f32[] mean of squared conv features over unpadded frames and channels.
  """

  features: jax.Array
  encoded: jax.Array
  hidden_states: list[jax.Array]
  frame_paddings: jax.Array
  feature_penalty: jax.Array


def _torch_linear_init(names: tuple[str | None, ...]):
  # PyTorch nn.Linear's default, U(+-1/sqrt(fan_in)), used by fairseq for the projections
  # outside the Transformer.
  return nn.with_logical_partitioning(
    nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"), names
  )


class Backbone(nn.Module):
  """Fields of the shared path; the names and meanings of `config.model` (configs/common.py)."""

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
  layerdrop: float
  feature_grad_mult: float
  # Defaults: wav2vec 2.0's waveform frontend and Transformer (configs/common.py comments).
  frontend: str = "waveform"
  mel_bins: int = 80
  mel_normalization: str = "utterance"
  mel_subsampling: int = 4
  mel_conv_channels: int = 256
  encoder: str = "transformer"
  conformer_position_embeddings: str = "relative"
  conformer_conv_kernel: int = 31
  conformer_conv_norm: str = "batch_norm"
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def dense(self, features: int, names: tuple[str | None, ...], name: str) -> nn.Dense:
    """A Dense layer initialised as PyTorch's nn.Linear, with logical axis `names`."""
    return nn.Dense(
      features,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=_torch_linear_init(names),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names[-1:]),
      name=name,
    )

  def make_frontend(self) -> nn.Module:
    """The 'frontend' submodule `self.frontend` names (call from a compact method)."""
    dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype, name="frontend")
    if self.frontend == "waveform":
      return frontends.WaveformFrontend(
        self.conv_layers, self.extractor_mode, self.conv_bias, **dtypes
      )
    if self.frontend == "logmel":
      return spectrogram.LogMelFrontend(
        num_mel_bins=self.mel_bins,
        normalization=self.mel_normalization,
        subsampling=self.mel_subsampling,
        conv_channels=self.mel_conv_channels,
        **dtypes,
      )
    raise ValueError(f"config.model.frontend={self.frontend!r}; expected one of {FRONTENDS}")

  def make_encoder(self) -> nn.Module:
    """The 'encoder' submodule `self.encoder` names (call from a compact method).

    The conformer has no convolutional positional embedding (fairseq's and transformers'
    conformers do not use one), so `layer_norm_first` and `pos_conv_*` are Transformer
    fields it ignores.
    """
    shared = (self.num_layers, self.num_heads, self.mlp_dim)
    regularisation = dict(
      dropout=self.dropout,
      attention_dropout=self.attention_dropout,
      activation_dropout=self.activation_dropout,
      layerdrop=self.layerdrop,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="encoder",
    )
    if self.encoder == "transformer":
      return transformer.TransformerEncoder(
        *shared,
        self.layer_norm_first,
        self.pos_conv_kernel,
        self.pos_conv_groups,
        **regularisation,
      )
    if self.encoder == "conformer":
      return conformer.ConformerEncoder(
        *shared,
        position_embeddings=self.conformer_position_embeddings,
        conv_kernel=self.conformer_conv_kernel,
        conv_norm=self.conformer_conv_norm,
        **regularisation,
      )
    raise ValueError(f"config.model.encoder={self.encoder!r}; expected one of {ENCODERS}")

  def encode(
    self,
    audio_BxS: jax.Array,
    audio_paddings_BxS: jax.Array,
    mask_BxF: jax.Array | None,
    *,
    deterministic: bool,
    channel_mask_BxD: jax.Array | None = None,
  ) -> BackboneOutput:
    """Runs the shared path; call from a subclass's compact `__call__`.

    Args:
      audio_BxS: f32[B, S] 16 kHz waveform, right-padded.
      audio_paddings_BxS: f32[B, S], 1.0 at padding.
      mask_BxF: bool[B, F] frames replaced by the learned mask embedding, F =
        num_frames(S, self); None masks nothing (no 'mask_emb' is then created, as in a
        model that never masks).
      deterministic: no dropout or layerdrop when True; else needs the 'dropout' rng (and,
        with a batch-norm conformer, `mutable=['batch_stats']`).
      channel_mask_BxD: bool[B, embed_dim] channels zeroed at every frame (fine-tuning's
        mask_channel, fairseq `apply_mask`); None zeroes nothing.
    """
    features_BxFxC, frame_paddings_BxF = self.make_frontend()(audio_BxS, audio_paddings_BxS)
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
    # fairseq has post_extract_proj only when the widths differ.
    x_BxFxD = features_BxFxC
    if channels != self.embed_dim:
      x_BxFxD = self.dense(self.embed_dim, (None, "embed"), "post_extract_proj")(x_BxFxD)
    x_BxFxD = nn.Dropout(self.dropout_input)(x_BxFxD, deterministic=deterministic)
    if mask_BxF is not None:
      mask_emb_D = self.param(
        "mask_emb",
        nn.with_logical_partitioning(nn.initializers.uniform(scale=1.0), ("embed",)),
        (self.embed_dim,),
        self.param_dtype,
      )
      x_BxFxD = jnp.where(mask_BxF[:, :, None], mask_emb_D.astype(self.dtype), x_BxFxD)
    if channel_mask_BxD is not None:
      x_BxFxD = jnp.where(channel_mask_BxD[:, None, :], jnp.zeros((), self.dtype), x_BxFxD)
    x_BxFxD = nn.with_logical_constraint(x_BxFxD, ("batch", "time", "embed"))

    x_BxFxD, hidden_states = self.make_encoder()(
      x_BxFxD, frame_paddings_BxF, deterministic=deterministic, return_all_layers=True
    )
    return BackboneOutput(
      features=features_BxFxC,
      encoded=x_BxFxD,
      hidden_states=hidden_states,
      frame_paddings=frame_paddings_BxF,
      feature_penalty=feature_penalty,
    )
