"""wav2vec 2.0 Transformer encoder (fairseq TransformerEncoder / TransformerSentenceEncoderLayer).

Convolutional positional embedding, post-LN (Base) or pre-LN (Large) layers, layerdrop.
Parameters are initialised as fairseq's `init_bert_params`: linear weights N(0, 0.02),
biases 0.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

# fairseq's LayerNorm uses PyTorch's default epsilon.
NORM_EPSILON = 1e-5
# Large enough that exp() underflows to exactly 0, finite so an all-padding row gives no NaN.
_MASKED_LOGIT = -1e30


def _bert_init(names: tuple[str | None, ...]):
  return nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02), names)


def _zeros(names: tuple[str | None, ...]):
  return nn.with_logical_partitioning(nn.initializers.zeros, names)


def layer_norm(
  x_BxTxD: jax.Array,
  name: str,
  dtype: jnp.dtype,
  param_dtype: jnp.dtype,
  axis_name: str = "embed",
):
  """LayerNorm over the last axis computed in float32, cast back to `dtype`.

  Call only inside a compact method: it creates the submodule `name` there. `axis_name`
  is the logical name of the normalised axis (its scale and bias).
  """
  y = nn.LayerNorm(
    epsilon=NORM_EPSILON,
    dtype=jnp.float32,
    param_dtype=param_dtype,
    scale_init=nn.with_logical_partitioning(nn.initializers.ones, (axis_name,)),
    bias_init=_zeros((axis_name,)),
    name=name,
  )(x_BxTxD.astype(jnp.float32))
  return y.astype(dtype)


def dense(
  features: int,
  names: tuple[str | None, str | None],
  name: str,
  dtype: jnp.dtype,
  param_dtype: jnp.dtype,
) -> nn.Dense:
  """nn.Dense with fairseq's BERT init (kernel N(0, 0.02), bias 0) and logical names.

  `names` names the kernel's (input, output) axes; the bias takes the output's name.
  """
  return nn.Dense(
    features,
    dtype=dtype,
    param_dtype=param_dtype,
    kernel_init=_bert_init(names),
    bias_init=_zeros(names[-1:]),
    name=name,
  )


def attend(
  q_BxTxHxK: jax.Array,
  k_BxTxHxK: jax.Array,
  v_BxTxHxK: jax.Array,
  paddings_BxT: jax.Array,
  *,
  dropout: float,
  deterministic: bool,
  logit_bias_BxHxTxT: jax.Array | None = None,
) -> jax.Array:
  """Softmax attention of (already scaled) queries over the unpadded keys of each row.

  logits = q . k (+ logit_bias) in float32, padded keys masked out, softmax, dropout on
  the probabilities, then the probability-weighted values in the dtype of `q`. Call only
  inside a compact method: it creates the Dropout submodule there.

  Returns:
    [B, T, H, K] attention outputs.
  """
  logits_BxHxTxT = jnp.einsum("bqhk,bthk->bhqt", q_BxTxHxK, k_BxTxHxK).astype(jnp.float32)
  if logit_bias_BxHxTxT is not None:
    logits_BxHxTxT = logits_BxHxTxT + logit_bias_BxHxTxT.astype(jnp.float32)
  key_valid_Bx1x1xT = (paddings_BxT == 0)[:, None, None, :]
  logits_BxHxTxT = jnp.where(key_valid_Bx1x1xT, logits_BxHxTxT, _MASKED_LOGIT)
  probs_BxHxTxT = jax.nn.softmax(logits_BxHxTxT, axis=-1)
  probs_BxHxTxT = nn.Dropout(dropout)(probs_BxHxTxT, deterministic=deterministic)
  return jnp.einsum("bhqt,bthk->bqhk", probs_BxHxTxT.astype(q_BxTxHxK.dtype), v_BxTxHxK)


class PositionalConv(nn.Module):
  """Grouped 1-D convolution with weight norm, "same" padding and GELU.

  Weight norm as PyTorch `weight_norm(conv, dim=2)`: one gain per kernel position,
  kernel[k] = g[k] * v[k] / ||v[k]||, the norm over input and output channels. For even
  kernels the last output frame is dropped (fairseq SamePad), so output length = input.

  Attributes:
    kernel_size: kernel width in frames (128 in wav2vec 2.0).
    groups: convolution groups (16).
    dtype: compute dtype of the convolution.
    param_dtype: parameter dtype.
  """

  kernel_size: int
  groups: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    """Returns GELU(conv(x) + bias), [B, T, D] in `dtype`."""
    dim = x_BxTxD.shape[-1]
    # fairseq: N(0, sqrt(4 / (k * D))), then weight norm whose gain starts at ||v||.
    std = math.sqrt(4.0 / (self.kernel_size * dim))
    weight_v_KxIxD = self.param(
      "weight_v",
      nn.with_logical_partitioning(nn.initializers.normal(stddev=std), ("conv", None, "embed")),
      (self.kernel_size, dim // self.groups, dim),
      self.param_dtype,
    )
    v_norm_K = jnp.sqrt(jnp.sum(jnp.square(weight_v_KxIxD.astype(jnp.float32)), axis=(1, 2)))
    weight_g_K = self.param(
      "weight_g",
      nn.with_logical_partitioning(lambda rng, shape, dtype: v_norm_K.astype(dtype), ("conv",)),
      (self.kernel_size,),
      self.param_dtype,
    )
    bias_D = self.param("bias", _zeros(("embed",)), (dim,), self.param_dtype)
    kernel_KxIxD = weight_v_KxIxD.astype(jnp.float32) * (weight_g_K / v_norm_K)[:, None, None]
    pad = self.kernel_size // 2
    # One convolution per group rather than feature_group_count: XLA's SPMD partitioner
    # doubles the kernel gradient of a grouped convolution on a mesh with both a sharded
    # batch and a tensor axis (jax 0.10; tests/test_sharding.py checks the gradients).
    # Group g maps input channels [g*I, (g+1)*I) to output channels [g*I, (g+1)*I).
    x_groups = jnp.split(x_BxTxD.astype(self.dtype), self.groups, axis=-1)
    kernel_groups = jnp.split(kernel_KxIxD.astype(self.dtype), self.groups, axis=-1)
    y_BxTxD = jnp.concatenate(
      [
        jax.lax.conv_general_dilated(
          x_g,
          kernel_g,
          window_strides=(1,),
          padding=((pad, pad),),
          dimension_numbers=("NWC", "WIO", "NWC"),
        )
        for x_g, kernel_g in zip(x_groups, kernel_groups, strict=True)
      ],
      axis=-1,
    )
    y_BxTxD = y_BxTxD[:, : x_BxTxD.shape[1]]
    y_BxTxD = y_BxTxD + bias_D.astype(self.dtype)
    return nn.gelu(y_BxTxD, approximate=False)


class HeadProjection(nn.Module):
  """Affine map into or out of attention heads: einsum with a [D, H, K] or [H, K, D] kernel.

  flax's DenseGeneral would do, but it initialises a flattened kernel and unboxes it
  against the logical rules before reshaping, which fails under a mesh context.

  Attributes:
    kernel_shape: (D, H, K) into heads or (H, K, D) out of them.
    into_heads: which of the two.
    dtype: compute dtype.
    param_dtype: parameter dtype.
    use_bias: whether the map has a bias.
  """

  kernel_shape: tuple[int, int, int]
  into_heads: bool
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, T, D] -> [B, T, H, K] into heads; [B, T, H, K] -> [B, T, D] out of them."""
    if self.into_heads:
      names, equation, out_dims = ("embed", "heads", "kv"), "btd,dhk->bthk", 2
    else:
      names, equation, out_dims = ("heads", "kv", "embed"), "bthk,hkd->btd", 1
    kernel = self.param("kernel", _bert_init(names), self.kernel_shape, self.param_dtype)
    y = jnp.einsum(equation, x.astype(self.dtype), kernel.astype(self.dtype))
    if not self.use_bias:
      return y
    bias = self.param(
      "bias", _zeros(names[-out_dims:]), self.kernel_shape[-out_dims:], self.param_dtype
    )
    return y + bias.astype(self.dtype)


class SelfAttention(nn.Module):
  """Multi-head self-attention with q/k/v/out projections (with bias) and key padding.

  Attributes:
    num_heads: attention heads; head_dim = D / num_heads.
    attention_dropout: dropout on attention probabilities.
    dtype: compute dtype of the matmuls; the softmax runs in float32.
    param_dtype: parameter dtype.
  """

  num_heads: int
  attention_dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(
    self, x_BxTxD: jax.Array, paddings_BxT: jax.Array, *, deterministic: bool
  ) -> jax.Array:
    """Attends over the unpadded frames of each utterance; returns [B, T, D] in `dtype`."""
    dim = x_BxTxD.shape[-1]
    head_dim = dim // self.num_heads

    def project(name):
      return HeadProjection(
        (dim, self.num_heads, head_dim), True, self.dtype, self.param_dtype, name=name
      )(x_BxTxD)

    # fairseq scales q after its projection (bias included).
    q_BxTxHxK = project("query") * jnp.asarray(head_dim**-0.5, self.dtype)
    k_BxTxHxK = project("key")
    v_BxTxHxK = project("value")
    out_BxTxHxK = attend(
      q_BxTxHxK,
      k_BxTxHxK,
      v_BxTxHxK,
      paddings_BxT,
      dropout=self.attention_dropout,
      deterministic=deterministic,
    )
    return HeadProjection(
      (self.num_heads, head_dim, dim), False, self.dtype, self.param_dtype, name="out"
    )(out_BxTxHxK)


class TransformerLayer(nn.Module):
  """fairseq TransformerSentenceEncoderLayer: self-attention and GELU FFN, post- or pre-LN.

  Attributes:
    num_heads: attention heads.
    mlp_dim: feed-forward width.
    layer_norm_first: pre-LN (True, wav2vec 2.0 Large) or post-LN (False, Base).
    dropout: residual dropout (after attention and after the FFN).
    attention_dropout: dropout on attention probabilities.
    activation_dropout: dropout after the FFN activation.
    dtype: compute dtype; norms and softmax run in float32.
    param_dtype: parameter dtype.
  """

  num_heads: int
  mlp_dim: int
  layer_norm_first: bool = False
  dropout: float = 0.0
  attention_dropout: float = 0.0
  activation_dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(
    self, x_BxTxD: jax.Array, paddings_BxT: jax.Array, *, deterministic: bool
  ) -> jax.Array:
    """Applies the layer to [B, T, D]; padded frames are never attended to."""
    dim = x_BxTxD.shape[-1]
    x_BxTxD = x_BxTxD.astype(self.dtype)

    residual_BxTxD = x_BxTxD
    if self.layer_norm_first:
      x_BxTxD = layer_norm(x_BxTxD, "attention_norm", self.dtype, self.param_dtype)
    x_BxTxD = SelfAttention(
      self.num_heads,
      self.attention_dropout,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="attention",
    )(x_BxTxD, paddings_BxT, deterministic=deterministic)
    x_BxTxD = nn.Dropout(self.dropout)(x_BxTxD, deterministic=deterministic)
    x_BxTxD = residual_BxTxD + x_BxTxD
    if not self.layer_norm_first:
      x_BxTxD = layer_norm(x_BxTxD, "attention_norm", self.dtype, self.param_dtype)

    residual_BxTxD = x_BxTxD
    if self.layer_norm_first:
      x_BxTxD = layer_norm(x_BxTxD, "mlp_norm", self.dtype, self.param_dtype)
    h_BxTxM = dense(self.mlp_dim, ("embed", "mlp"), "fc1", self.dtype, self.param_dtype)(x_BxTxD)
    h_BxTxM = nn.gelu(h_BxTxM, approximate=False)
    h_BxTxM = nn.Dropout(self.activation_dropout)(h_BxTxM, deterministic=deterministic)
    x_BxTxD = dense(dim, ("mlp", "embed"), "fc2", self.dtype, self.param_dtype)(h_BxTxM)
    x_BxTxD = nn.Dropout(self.dropout)(x_BxTxD, deterministic=deterministic)
    x_BxTxD = residual_BxTxD + x_BxTxD
    if not self.layer_norm_first:
      x_BxTxD = layer_norm(x_BxTxD, "mlp_norm", self.dtype, self.param_dtype)
    return nn.with_logical_constraint(x_BxTxD, ("batch", "time", "embed"))


def apply_with_layerdrop(
  encoder: nn.Module,
  layer: nn.Module,
  x_BxTxD: jax.Array,
  paddings_BxT: jax.Array,
  *,
  deterministic: bool,
  rate: float,
) -> jax.Array:
  """`layer(x, paddings)`, skipped with probability `rate` in training (layerdrop).

  A lifted cond skips a dropped layer's compute, forward and backward (and leaves any
  state it keeps, such as batch-norm statistics, as it was); init always runs the layer,
  since cond cannot create parameters. `encoder` is the calling module (its 'dropout' rng).
  """
  if deterministic or rate == 0.0 or encoder.is_initializing():
    return layer(x_BxTxD, paddings_BxT, deterministic=deterministic)
  keep = jax.random.bernoulli(encoder.make_rng("dropout"), 1.0 - rate)
  return nn.cond(
    keep,
    lambda mdl, x: mdl(x, paddings_BxT, deterministic=False),
    lambda mdl, x: x,
    layer,
    x_BxTxD,
  )


class TransformerEncoder(nn.Module):
  """fairseq wav2vec 2.0 TransformerEncoder.

  post-LN: x += pos_conv(x); LayerNorm; dropout; layers.
  pre-LN:  x += pos_conv(x); dropout; layers; LayerNorm.

  Attributes:
    num_layers: Transformer layers.
    num_heads: attention heads.
    mlp_dim: feed-forward width.
    layer_norm_first: pre-LN (True) or post-LN (False).
    pos_conv_kernel: positional convolution kernel (frames).
    pos_conv_groups: positional convolution groups.
    dropout: residual dropout, also applied to the encoder input.
    attention_dropout: dropout on attention probabilities.
    activation_dropout: dropout after the FFN activation.
    layerdrop: probability of skipping a whole layer in training ('dropout' rng).
    dtype: compute dtype; norms and softmax run in float32.
    param_dtype: parameter dtype.
  """

  num_layers: int
  num_heads: int
  mlp_dim: int
  layer_norm_first: bool = False
  pos_conv_kernel: int = 128
  pos_conv_groups: int = 16
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
      deterministic: no dropout / layerdrop when True.
      return_all_layers: also return the hidden states.

    Returns:
      [B, T, D] in `dtype`; with `return_all_layers`, (output, hidden states), a list of
      num_layers + 1 arrays as Hugging Face's `output_hidden_states`: index 0 is the input
      to the first layer, index i the output of layer i, the last one the encoder output
      (after the final LayerNorm for pre-LN: transformers 5 calls that `last_hidden_state`
      and keeps the state before it in `hidden_states[-1]`).
    """
    # Zeroed padding keeps the positional conv of valid frames independent of padding.
    x_BxTxD = x_BxTxD.astype(self.dtype) * (1.0 - paddings_BxT)[:, :, None].astype(self.dtype)
    x_BxTxD = x_BxTxD + PositionalConv(
      self.pos_conv_kernel,
      self.pos_conv_groups,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="pos_conv",
    )(x_BxTxD)
    if not self.layer_norm_first:
      x_BxTxD = layer_norm(x_BxTxD, "layer_norm", self.dtype, self.param_dtype)
    x_BxTxD = nn.Dropout(self.dropout)(x_BxTxD, deterministic=deterministic)
    x_BxTxD = nn.with_logical_constraint(x_BxTxD, ("batch", "time", "embed"))

    hidden_states = [x_BxTxD]
    for i in range(self.num_layers):
      layer = TransformerLayer(
        self.num_heads,
        self.mlp_dim,
        self.layer_norm_first,
        self.dropout,
        self.attention_dropout,
        self.activation_dropout,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name=f"layers_{i}",
      )
      x_BxTxD = apply_with_layerdrop(
        self, layer, x_BxTxD, paddings_BxT, deterministic=deterministic, rate=self.layerdrop
      )
      hidden_states.append(x_BxTxD)

    if self.layer_norm_first:
      x_BxTxD = layer_norm(x_BxTxD, "layer_norm", self.dtype, self.param_dtype)
      hidden_states[-1] = x_BxTxD
    if return_all_layers:
      return x_BxTxD, hidden_states
    return x_BxTxD
