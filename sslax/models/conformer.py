"""Conformer encoder (Gulati et al. 2020) as transformers' `Wav2Vec2ConformerEncoder`.

A drop-in for `transformer.TransformerEncoder`: the same call, `(x_BxTxD, paddings_BxT, *,
deterministic, return_all_layers)`, and the same hidden-state convention. Each block is

  x = x + 1/2 FFN(x)                      (macaron half-step, pre-LN)
  x = x + Dropout(MHSA(LN(x)))            (relative or rotary positions)
  x = x + ConvModule(x)                   (LN, pointwise + GLU, depthwise, norm, act, pointwise)
  x = x + 1/2 FFN(x)
  x = LN(x)

and the encoder zeroes padded inputs, applies dropout, the blocks and a final LayerNorm.
Like transformers (and fairseq's ConformerEncoder) there is no convolutional positional
embedding: transformers builds `pos_conv_embed` but never calls it.

Padding: padded frames never reach unpadded ones. Attention masks padded keys, the
convolution module zeroes padded frames before its depthwise convolution, and batch norm
takes its training statistics over unpadded frames only. transformers does neither of the
last two (its depthwise convolution reads the padded frames, which are not zero after the
first feed-forward, and `BatchNorm1d` averages over padding), so its outputs for a padded
batch depend on the padding; the tests compare with transformers on each utterance alone.

Batch norm state lives in the Flax `batch_stats` collection (`mean`, `var` per layer), as
PyTorch's running buffers: with `deterministic=True` the running statistics normalise;
with `deterministic=False` the batch statistics over unpadded frames normalise and the
running ones are updated (momentum 0.1 as PyTorch, variance unbiased as PyTorch), which
needs `apply(..., mutable=['batch_stats'])`. Under `jax.jit` over a sharded global batch
the statistics are those of the global batch (as SyncBatchNorm), not of one device's
shard. `conv_norm='layer_norm'` has no state.

Parameters are initialised as transformers' `Wav2Vec2ConformerPreTrainedModel`: linear
weights N(0, 0.02), biases 0, convolutions Kaiming-normal, pos_bias_u/v Xavier-uniform.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sslax.models import transformer

# PyTorch BatchNorm1d defaults (transformers' conformer convolution module).
BATCH_NORM_EPSILON = 1e-5
BATCH_NORM_MOMENTUM = 0.1

ACTIVATIONS = {"swish": nn.swish, "gelu": functools.partial(nn.gelu, approximate=False)}


def _names(init, names: tuple[str | None, ...]):
  return nn.with_logical_partitioning(init, names)


class FeedForward(nn.Module):
  """Pre-LN feed-forward branch: LN -> fc1 -> activation -> dropout -> fc2 -> dropout.

  Returns the branch only; the block adds half of it to the residual.

  Attributes:
    mlp_dim: inner width.
    activation: key of ACTIVATIONS.
    dropout: dropout on the branch output.
    activation_dropout: dropout after the activation.
    dtype: compute dtype; the LayerNorm runs in float32.
    param_dtype: parameter dtype.
  """

  mlp_dim: int
  activation: str = "swish"
  dropout: float = 0.0
  activation_dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, *, deterministic: bool) -> jax.Array:
    """[B, T, D] -> [B, T, D] in `dtype`."""
    dim = x_BxTxD.shape[-1]
    h_BxTxD = transformer.layer_norm(x_BxTxD, "norm", self.dtype, self.param_dtype)
    h_BxTxM = transformer.dense(
      self.mlp_dim, ("embed", "mlp"), "fc1", self.dtype, self.param_dtype
    )(h_BxTxD)
    h_BxTxM = ACTIVATIONS[self.activation](h_BxTxM)
    h_BxTxM = nn.Dropout(self.activation_dropout)(h_BxTxM, deterministic=deterministic)
    y_BxTxD = transformer.dense(dim, ("mlp", "embed"), "fc2", self.dtype, self.param_dtype)(h_BxTxM)
    return nn.Dropout(self.dropout)(y_BxTxD, deterministic=deterministic)


def relative_sinusoids(num_frames: int, dim: int) -> np.ndarray:
  """Transformer-XL sinusoids of the relative positions T-1, T-2, ..., -(T-1).

  Row m encodes r = T-1-m (r > 0: the key is r frames left of the query):
  [sin(r w_0), cos(r w_0), sin(r w_1), ...] with w_i = 10000^(-2i / dim), as transformers'
  `Wav2Vec2ConformerRelPositionalEmbedding`. Returns f64[2T-1, dim].
  """
  r_R = np.arange(num_frames - 1, -num_frames, -1, dtype=np.float64)
  w_W = np.exp(np.arange(0, dim, 2, dtype=np.float64) * -(math.log(10000.0) / dim))
  angles_RxW = r_R[:, None] * w_W[None, :]
  table_RxD = np.empty((2 * num_frames - 1, dim))
  table_RxD[:, 0::2] = np.sin(angles_RxW)
  table_RxD[:, 1::2] = np.cos(angles_RxW)
  return table_RxD


def rotate(x_BxTxHxK: jax.Array, base: float) -> jax.Array:
  """Rotary embedding of frame positions 0..T-1 (RoFormer, "rotate half" layout).

  x * cos(t w) + rotate_half(x) * sin(t w), w_i = base^(-2i / K) repeated for the two
  halves of the head dimension, rotate_half(x) = [-x2, x1].
  """
  frames, head_dim = x_BxTxHxK.shape[1], x_BxTxHxK.shape[-1]
  inv_freq_W = 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
  angles_TxK = np.tile(np.arange(frames, dtype=np.float64)[:, None] * inv_freq_W, (1, 2))
  cos_1xTx1xK = jnp.asarray(np.cos(angles_TxK)[None, :, None, :], x_BxTxHxK.dtype)
  sin_1xTx1xK = jnp.asarray(np.sin(angles_TxK)[None, :, None, :], x_BxTxHxK.dtype)
  first, second = jnp.split(x_BxTxHxK, 2, axis=-1)
  rotated_BxTxHxK = jnp.concatenate([-second, first], axis=-1)
  return x_BxTxHxK * cos_1xTx1xK + rotated_BxTxHxK * sin_1xTx1xK


def _skew(scores_BxHxTxR: jax.Array) -> jax.Array:
  """[..., T, 2T-1] scores against relative positions T-1..-(T-1) -> [..., T, T] per key.

  out[i, j] = scores[i, T-1-i+j] (relative position i - j), by the Transformer-XL
  reshape: with a zero column appended, row i starts at flat index 2T i, so the wanted
  entry sits at flat index (T-1) + (2T-1) i + j.
  """
  *lead, frames, positions = scores_BxHxTxR.shape
  padded = jnp.pad(scores_BxHxTxR, [(0, 0)] * len(lead) + [(0, 0), (0, 1)])
  flat = padded.reshape(*lead, frames * (positions + 1))
  flat = flat[..., frames - 1 : frames - 1 + frames * positions]
  return flat.reshape(*lead, frames, positions)[..., :frames]


class ConformerAttention(nn.Module):
  """Multi-head self-attention with relative (Transformer-XL) or rotary positions.

  'relative' (transformers `position_embeddings_type="relative"`, fairseq `rel_pos`):
    logits = (q + u) k / sqrt(K) + (q + v) P[i - j] / sqrt(K), P = pos(sinusoids),
    with learned per-head biases u (`pos_bias_u`), v (`pos_bias_v`) and a bias-free `pos`.
  'rotary' (transformers `"rotary"`, fairseq `rope`): as fairseq and transformers, the
    layer input split into head-sized chunks is rotated by its frame position before the
    query and key projections (values see the unrotated input); logits = q k / sqrt(K).

  Attributes:
    num_heads: attention heads; head_dim = D / num_heads.
    position_embeddings: 'relative' or 'rotary'.
    rotary_base: base of the rotary frequencies.
    attention_dropout: dropout on attention probabilities.
    dtype: compute dtype of the matmuls; the softmax runs in float32.
    param_dtype: parameter dtype.
  """

  num_heads: int
  position_embeddings: str = "relative"
  rotary_base: float = 10000.0
  attention_dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(
    self, x_BxTxD: jax.Array, paddings_BxT: jax.Array, *, deterministic: bool
  ) -> jax.Array:
    """Attends over the unpadded frames of each utterance; returns [B, T, D] in `dtype`."""
    if self.position_embeddings not in ("relative", "rotary"):
      raise ValueError(
        f"position_embeddings must be 'relative' or 'rotary', got {self.position_embeddings!r}"
      )
    batch, frames, dim = x_BxTxD.shape
    head_dim = dim // self.num_heads
    x_BxTxD = jnp.asarray(x_BxTxD, self.dtype)

    def project(name, inputs, use_bias=True):
      return transformer.HeadProjection(
        (dim, self.num_heads, head_dim),
        True,
        self.dtype,
        self.param_dtype,
        use_bias=use_bias,
        name=name,
      )(inputs)

    query_key_BxTxD = x_BxTxD
    if self.position_embeddings == "rotary":
      heads_BxTxHxK = x_BxTxD.reshape(batch, frames, self.num_heads, head_dim)
      query_key_BxTxD = rotate(heads_BxTxHxK, self.rotary_base).reshape(batch, frames, dim)
    scale = jnp.asarray(head_dim**-0.5, self.dtype)
    q_BxTxHxK = project("query", query_key_BxTxD)
    k_BxTxHxK = project("key", query_key_BxTxD)
    v_BxTxHxK = project("value", x_BxTxD)

    logit_bias_BxHxTxT = None
    if self.position_embeddings == "relative":

      def head_bias(name):
        return self.param(
          name,
          _names(nn.initializers.xavier_uniform(), ("heads", "kv")),
          (self.num_heads, head_dim),
          self.param_dtype,
        ).astype(self.dtype)

      pos_bias_u_HxK, pos_bias_v_HxK = head_bias("pos_bias_u"), head_bias("pos_bias_v")
      sinusoids_1xRxD = jnp.asarray(relative_sinusoids(frames, dim)[None], self.dtype)
      pos_RxHxK = project("pos", sinusoids_1xRxD, use_bias=False)[0]
      position_BxHxTxR = jnp.einsum(
        "bqhk,rhk->bhqr", (q_BxTxHxK + pos_bias_v_HxK) * scale, pos_RxHxK
      )
      logit_bias_BxHxTxT = _skew(position_BxHxTxR)
      q_BxTxHxK = q_BxTxHxK + pos_bias_u_HxK

    out_BxTxHxK = transformer.attend(
      q_BxTxHxK * scale,
      k_BxTxHxK,
      v_BxTxHxK,
      paddings_BxT,
      dropout=self.attention_dropout,
      deterministic=deterministic,
      logit_bias_BxHxTxT=logit_bias_BxHxTxT,
    )
    return transformer.HeadProjection(
      (self.num_heads, head_dim, dim), False, self.dtype, self.param_dtype, name="out"
    )(out_BxTxHxK)


class MaskedBatchNorm(nn.Module):
  """Per-channel batch norm whose training statistics skip padded frames.

  Training: normalise with the mean and (biased) variance over the unpadded frames of the
  whole batch and update the running `batch_stats` (mean, unbiased variance) with
  momentum BATCH_NORM_MOMENTUM, as PyTorch's BatchNorm1d. Evaluation: normalise with the
  running statistics.

  Attributes:
    param_dtype: parameter dtype (the statistics are float32).
  """

  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(
    self, x_BxTxC: jax.Array, paddings_BxT: jax.Array, *, use_running_average: bool
  ) -> jax.Array:
    """Normalises f32[B, T, C] per channel; returns float32."""
    channels = x_BxTxC.shape[-1]
    x_BxTxC = x_BxTxC.astype(jnp.float32)
    # The initialisers ignore their key: the statistics start at PyTorch's (0, 1).
    running_mean = self.variable(
      "batch_stats", "mean", _names(nn.initializers.zeros, ("mlp",)), None, (channels,)
    )
    running_var = self.variable(
      "batch_stats", "var", _names(nn.initializers.ones, ("mlp",)), None, (channels,)
    )
    if use_running_average:
      mean_C, var_C = running_mean.value, running_var.value
    else:
      valid_BxTx1 = (1.0 - paddings_BxT.astype(jnp.float32))[:, :, None]
      count = jnp.sum(valid_BxTx1)
      mean_C = jnp.sum(x_BxTxC * valid_BxTx1, axis=(0, 1)) / jnp.maximum(count, 1.0)
      squares_C = jnp.sum(jnp.square(x_BxTxC - mean_C) * valid_BxTx1, axis=(0, 1))
      var_C = squares_C / jnp.maximum(count, 1.0)
      if not self.is_initializing():
        keep = 1.0 - BATCH_NORM_MOMENTUM
        unbiased_C = squares_C / jnp.maximum(count - 1.0, 1.0)
        running_mean.value = keep * running_mean.value + BATCH_NORM_MOMENTUM * mean_C
        running_var.value = keep * running_var.value + BATCH_NORM_MOMENTUM * unbiased_C
    scale_C = self.param(
      "scale", _names(nn.initializers.ones, ("mlp",)), (channels,), self.param_dtype
    )
    bias_C = self.param(
      "bias", _names(nn.initializers.zeros, ("mlp",)), (channels,), self.param_dtype
    )
    normed_BxTxC = (x_BxTxC - mean_C) * jax.lax.rsqrt(var_C + BATCH_NORM_EPSILON)
    return normed_BxTxC * scale_C.astype(jnp.float32) + bias_C.astype(jnp.float32)


class ConvolutionModule(nn.Module):
  """Conformer convolution branch (bias-free convolutions, as transformers and fairseq).

  LN -> pointwise conv to 2D + GLU -> zero padded frames -> depthwise conv ("same") ->
  batch norm or layer norm -> activation -> pointwise conv -> dropout.
  The GLU kernel is [D, 2, D] (value, gate): the inner channels are one logical axis
  ('mlp'), sharded like a feed-forward's hidden units.

  Attributes:
    kernel_size: depthwise kernel width in frames (odd; 31 in transformers and fairseq).
    norm: 'batch_norm' (transformers, Gulati et al.) or 'layer_norm'.
    activation: key of ACTIVATIONS.
    dropout: dropout on the branch output.
    dtype: compute dtype; norms run in float32.
    param_dtype: parameter dtype.
  """

  kernel_size: int = 31
  norm: str = "batch_norm"
  activation: str = "swish"
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(
    self, x_BxTxD: jax.Array, paddings_BxT: jax.Array, *, deterministic: bool
  ) -> jax.Array:
    """[B, T, D] -> the branch, [B, T, D] in `dtype`."""
    if self.kernel_size % 2 != 1:
      raise ValueError(f"kernel_size must be odd for 'same' padding, got {self.kernel_size}")
    if self.norm not in ("batch_norm", "layer_norm"):
      raise ValueError(f"norm must be 'batch_norm' or 'layer_norm', got {self.norm!r}")
    dim = x_BxTxD.shape[-1]
    kaiming = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
    # The GLU kernel's fan-in is its first axis (torch: [2D, D, 1], fan_in D).
    kaiming_glu = nn.initializers.variance_scaling(
      2.0, "fan_in", "normal", in_axis=0, out_axis=(1, 2)
    )
    h_BxTxD = transformer.layer_norm(x_BxTxD, "layer_norm", self.dtype, self.param_dtype)
    glu_kernel_Dx2xD = self.param(
      "pointwise_in",
      _names(kaiming_glu, ("embed", None, "mlp")),
      (dim, 2, dim),
      self.param_dtype,
    )
    value_gate_BxTx2xD = jnp.einsum("btd,dge->btge", h_BxTxD, glu_kernel_Dx2xD.astype(self.dtype))
    h_BxTxD = value_gate_BxTx2xD[:, :, 0] * jax.nn.sigmoid(value_gate_BxTx2xD[:, :, 1])
    h_BxTxD = h_BxTxD * (1.0 - paddings_BxT)[:, :, None].astype(self.dtype)
    depthwise_Kx1xD = self.param(
      "depthwise",
      # fan_in of a depthwise kernel is its width: in_axis -2 has size 1.
      _names(kaiming, ("conv", None, "mlp")),
      (self.kernel_size, 1, dim),
      self.param_dtype,
    )
    pad = self.kernel_size // 2
    h_BxTxD = jax.lax.conv_general_dilated(
      h_BxTxD,
      depthwise_Kx1xD.astype(self.dtype),
      window_strides=(1,),
      padding=((pad, pad),),
      dimension_numbers=("NWC", "WIO", "NWC"),
      feature_group_count=dim,
    )
    if self.norm == "batch_norm":
      h_BxTxD = MaskedBatchNorm(self.param_dtype, name="batch_norm")(
        h_BxTxD, paddings_BxT, use_running_average=deterministic
      )
    else:
      h_BxTxD = transformer.layer_norm(
        h_BxTxD, "conv_norm", jnp.float32, self.param_dtype, axis_name="mlp"
      )
    h_BxTxD = ACTIVATIONS[self.activation](h_BxTxD).astype(self.dtype)
    out_kernel_DxD = self.param(
      "pointwise_out", _names(kaiming, ("mlp", "embed")), (dim, dim), self.param_dtype
    )
    y_BxTxD = jnp.einsum("btd,de->bte", h_BxTxD, out_kernel_DxD.astype(self.dtype))
    return nn.Dropout(self.dropout)(y_BxTxD, deterministic=deterministic)


class ConformerLayer(nn.Module):
  """One Conformer block (transformers `Wav2Vec2ConformerEncoderLayer`).

  Attributes:
    num_heads: attention heads.
    mlp_dim: feed-forward width (both half-step feed-forwards).
    position_embeddings: 'relative' or 'rotary'.
    conv_kernel: depthwise convolution width (odd).
    conv_norm: 'batch_norm' or 'layer_norm' in the convolution module.
    activation: 'swish' or 'gelu', in the feed-forwards and the convolution module.
    rotary_base: base of the rotary frequencies.
    dropout: dropout on every branch output before its residual sum (transformers
      uses attention_dropout after the attention branch and conformer_conv_dropout after
      the convolution branch; fairseq's conformer uses its dropout for both).
    attention_dropout: dropout on attention probabilities.
    activation_dropout: dropout after the feed-forward activation.
    dtype: compute dtype; norms and softmax run in float32.
    param_dtype: parameter dtype.
  """

  num_heads: int
  mlp_dim: int
  position_embeddings: str = "relative"
  conv_kernel: int = 31
  conv_norm: str = "batch_norm"
  activation: str = "swish"
  rotary_base: float = 10000.0
  dropout: float = 0.0
  attention_dropout: float = 0.0
  activation_dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(
    self, x_BxTxD: jax.Array, paddings_BxT: jax.Array, *, deterministic: bool
  ) -> jax.Array:
    """Applies the block to [B, T, D]; padded frames never reach unpadded ones."""
    dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    ffn = functools.partial(
      FeedForward, self.mlp_dim, self.activation, self.dropout, self.activation_dropout, **dtypes
    )
    half = jnp.asarray(0.5, self.dtype)
    x_BxTxD = jnp.asarray(x_BxTxD, self.dtype)
    x_BxTxD = x_BxTxD + half * ffn(name="ffn1")(x_BxTxD, deterministic=deterministic)

    h_BxTxD = transformer.layer_norm(x_BxTxD, "attention_norm", self.dtype, self.param_dtype)
    h_BxTxD = ConformerAttention(
      self.num_heads,
      self.position_embeddings,
      self.rotary_base,
      self.attention_dropout,
      **dtypes,
      name="attention",
    )(h_BxTxD, paddings_BxT, deterministic=deterministic)
    x_BxTxD = x_BxTxD + nn.Dropout(self.dropout)(h_BxTxD, deterministic=deterministic)

    x_BxTxD = x_BxTxD + ConvolutionModule(
      self.conv_kernel, self.conv_norm, self.activation, self.dropout, **dtypes, name="conv"
    )(x_BxTxD, paddings_BxT, deterministic=deterministic)

    x_BxTxD = x_BxTxD + half * ffn(name="ffn2")(x_BxTxD, deterministic=deterministic)
    x_BxTxD = transformer.layer_norm(x_BxTxD, "final_norm", self.dtype, self.param_dtype)
    return nn.with_logical_constraint(x_BxTxD, ("batch", "time", "embed"))


class ConformerEncoder(nn.Module):
  """Conformer encoder: zero padding, dropout, Conformer blocks, final LayerNorm.

  Attributes:
    num_layers: Conformer blocks.
    num_heads: attention heads.
    mlp_dim: feed-forward width.
    position_embeddings: 'relative' (Transformer-XL) or 'rotary'.
    conv_kernel: depthwise convolution width (odd; 31).
    conv_norm: 'batch_norm' (state in `batch_stats`) or 'layer_norm'.
    activation: 'swish' (Gulati et al.) or 'gelu'.
    rotary_base: base of the rotary frequencies (10000).
    dropout: residual dropout, also applied to the encoder input.
    attention_dropout: dropout on attention probabilities.
    activation_dropout: dropout after the feed-forward activation.
    layerdrop: probability of skipping a whole block in training ('dropout' rng).
    dtype: compute dtype; norms and softmax run in float32.
    param_dtype: parameter dtype.
  """

  num_layers: int
  num_heads: int
  mlp_dim: int
  position_embeddings: str = "relative"
  conv_kernel: int = 31
  conv_norm: str = "batch_norm"
  activation: str = "swish"
  rotary_base: float = 10000.0
  dropout: float = 0.0
  attention_dropout: float = 0.0
  activation_dropout: float = 0.0
  layerdrop: float = 0.0
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(
    self,
    x_BxTxD: jax.Array,
    paddings_BxT: jax.Array,
    *,
    deterministic: bool,
    return_all_layers: bool = False,
  ):
    """Encodes frames.

    Args:
      x_BxTxD: [B, T, D] input frames.
      paddings_BxT: f32[B, T], 1.0 at padding.
      deterministic: no dropout / layerdrop and running batch-norm statistics when True;
        when False with conv_norm 'batch_norm', apply with mutable=['batch_stats'].
      return_all_layers: also return the hidden states.

    Returns:
      [B, T, D] in `dtype`; with `return_all_layers`, (output, hidden states): num_layers
      + 1 arrays, index 0 the input to the first block, index i the output of block i,
      the last one the encoder output after the final LayerNorm (as
      `TransformerEncoder` with pre-LN).
    """
    valid_BxTx1 = (1.0 - jnp.asarray(paddings_BxT, self.dtype))[:, :, None]
    x_BxTxD = jnp.asarray(x_BxTxD, self.dtype) * valid_BxTx1
    x_BxTxD = nn.Dropout(self.dropout)(x_BxTxD, deterministic=deterministic)
    x_BxTxD = nn.with_logical_constraint(x_BxTxD, ("batch", "time", "embed"))

    hidden_states = [x_BxTxD]
    for i in range(self.num_layers):
      layer = ConformerLayer(
        self.num_heads,
        self.mlp_dim,
        self.position_embeddings,
        self.conv_kernel,
        self.conv_norm,
        self.activation,
        self.rotary_base,
        self.dropout,
        self.attention_dropout,
        self.activation_dropout,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name=f"layers_{i}",
      )
      x_BxTxD = transformer.apply_with_layerdrop(
        self, layer, x_BxTxD, paddings_BxT, deterministic=deterministic, rate=self.layerdrop
      )
      hidden_states.append(x_BxTxD)

    x_BxTxD = transformer.layer_norm(x_BxTxD, "layer_norm", self.dtype, self.param_dtype)
    hidden_states[-1] = x_BxTxD
    if return_all_layers:
      return x_BxTxD, hidden_states
    return x_BxTxD
