"""Tests for sslax.models.wav2vec2: parameter counts, data flow, padding, dtypes.

The feature penalty is checked against fairseq's definition (`fairseq/models/wav2vec/
wav2vec2.py`: `features.float().pow(2).mean()` over the conv extractor's output), in
float64 torch. fairseq takes that mean over the whole zero-padded batch, padded frames
included, and its first GroupNorm's statistics include the padding; sslax (as its
backbone documents) takes it over unpadded frames with padding-free statistics, which is
fairseq's value on each utterance alone, so a padded utterance counts as it would alone.
The two agree on fairseq's cropped batches (no padding).
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from configs import common, w2v_base, w2v_large
from sslax.models import frontends, quantizers, transformer, wav2vec2

TINY_LAYERS = ((16, 10, 5), (16, 3, 2), (16, 2, 2))
NUM_SAMPLES = 1_000  # 49 frames with TINY_LAYERS


def _tiny_config(**overrides):
  fields = dict(
    conv_layers=TINY_LAYERS,
    embed_dim=24,
    num_layers=2,
    num_heads=2,
    mlp_dim=48,
    pos_conv_kernel=8,
    pos_conv_groups=4,
    final_dim=12,
    latent_vars=8,
    latent_groups=2,
  )
  fields.update(overrides)
  return common.wav2vec2_model(**fields)


def _inputs(seed=0, batch=2):
  rng = np.random.default_rng(seed)
  audio_BxS = rng.normal(size=(batch, NUM_SAMPLES)).astype(np.float32)
  paddings_BxS = np.zeros((batch, NUM_SAMPLES), np.float32)
  paddings_BxS[0, 700:] = 1.0
  frames = frontends.num_frames(NUM_SAMPLES, TINY_LAYERS)
  mask_BxF = rng.uniform(size=(batch, frames)) < 0.4
  return audio_BxS, paddings_BxS, mask_BxF


def _init(model, audio_BxS, paddings_BxS, mask_BxF):
  return jax.jit(
    lambda: model.init(
      jax.random.key(0), audio_BxS, paddings_BxS, mask_BxF, train=False, gumbel_temperature=2.0
    )
  )()


def _num_params(model_config):
  model = wav2vec2.Wav2Vec2(**model_config)
  frames = frontends.num_frames(16_000, model_config.conv_layers)
  shapes = jax.eval_shape(
    lambda: model.init(
      jax.random.key(0),
      jnp.zeros((1, 16_000)),
      jnp.zeros((1, 16_000)),
      jnp.zeros((1, frames), bool),
      train=False,
      gumbel_temperature=2.0,
    )
  )
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(shapes)))


@pytest.mark.parametrize(
  "config_module, expected", [(w2v_base, 95_044_608), (w2v_large, 317_390_592)]
)
def test_parameter_count_equals_hugging_face(config_module, expected):
  assert _num_params(config_module.get_config().model) == expected


def test_attributes_are_the_config_fields():
  fields = {f.name for f in dataclasses.fields(wav2vec2.Wav2Vec2)} - {"parent", "name"}
  assert fields == set(common.wav2vec2_model().keys()) | {"dtype", "param_dtype"}


class _Recorder:
  """Records the arguments and outputs of submodule calls (flax method interception)."""

  def __init__(self, *module_types):
    self.module_types = module_types
    self.calls = {}

  def __call__(self, next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, self.module_types) and context.method_name == "__call__":
      self.calls[type(context.module).__name__] = (args, out)
    return out


@pytest.fixture(scope="module")
def tiny():
  """The tiny model, its parameters and a jitted evaluation forward (compiled once)."""
  model = wav2vec2.Wav2Vec2(**_tiny_config())
  variables = _init(model, *_inputs())

  @jax.jit
  def apply(audio_BxS, paddings_BxS, mask_BxF):
    return model.apply(
      variables, audio_BxS, paddings_BxS, mask_BxF, train=False, gumbel_temperature=2.0
    )

  return model, variables, apply


def _fairseq_conv_features(variables, audio_BxS):
  """fairseq ConvFeatureExtractionModel (mode 'default') in float64 torch: per layer a
  Conv1d without bias, GroupNorm(C, C) after the first only, exact GELU. [B, C, F]."""
  params = nn.unbox(variables)["params"]["frontend"]
  x = torch.tensor(np.asarray(audio_BxS, np.float64))[:, None, :]
  for i, (channels, _, stride) in enumerate(TINY_LAYERS):
    # flax kernels are [K, C_in, C_out]; torch's [C_out, C_in, K].
    weight = torch.tensor(np.asarray(params[f"conv_{i}"]["kernel"], np.float64)).permute(2, 1, 0)
    x = torch.nn.functional.conv1d(x, weight, stride=stride)
    if i == 0:
      norm = {k: torch.tensor(np.asarray(v, np.float64)) for k, v in params["norm_0"].items()}
      x = torch.nn.functional.group_norm(x, channels, norm["scale"], norm["bias"], eps=1e-5)
    x = torch.nn.functional.gelu(x)
  return x.numpy()


def test_outputs_and_data_flow(tiny):
  model, variables, _ = tiny
  audio_BxS, paddings_BxS, mask_BxF = _inputs()

  @jax.jit
  def run():
    recorder = _Recorder(
      frontends.WaveformFrontend, transformer.TransformerEncoder, quantizers.GumbelProductQuantizer
    )
    with nn.intercept_methods(recorder):
      out = model.apply(
        variables, audio_BxS, paddings_BxS, mask_BxF, train=False, gumbel_temperature=2.0
      )
    return out, recorder.calls

  out, calls = run()
  batch, frames = mask_BxF.shape
  assert out.projected.shape == (batch, frames, 12) and out.projected.dtype == jnp.float32
  assert out.targets.shape == (batch, frames, 12) and out.targets.dtype == jnp.float32
  assert out.num_codevectors == 16
  valid_frames = frontends.num_frames(700, TINY_LAYERS)
  np.testing.assert_array_equal(out.frame_paddings[0], np.arange(frames) >= valid_frames)
  np.testing.assert_array_equal(out.frame_paddings[1], 0.0)

  # Feature penalty: fairseq's definition applied to each utterance's own samples
  # (`_fairseq_feature_penalty`), pooled over their frames.
  lengths = (700, NUM_SAMPLES)
  per_utterance = [
    _fairseq_conv_features(variables, audio_BxS[b : b + 1, :n]) for b, n in enumerate(lengths)
  ]
  expected = sum(np.sum(f**2) for f in per_utterance) / sum(f.size for f in per_utterance)
  np.testing.assert_allclose(out.feature_penalty, expected, rtol=1e-5)
  # fairseq on the zero-padded batch counts padded frames: a different value.
  zero_padded = np.where(paddings_BxS > 0, 0.0, audio_BxS)
  assert not np.isclose(
    out.feature_penalty, np.mean(_fairseq_conv_features(variables, zero_padded) ** 2), rtol=1e-2
  )
  _, (features_BxFxC, frame_paddings_BxF) = calls["WaveformFrontend"]
  valid = np.asarray(frame_paddings_BxF) == 0

  # Masked frames enter the encoder as mask_emb; the others do not.
  (encoder_in_BxFxD, encoder_paddings), _ = calls["TransformerEncoder"]
  encoder_in_BxFxD = np.asarray(encoder_in_BxFxD)
  mask_emb = np.asarray(nn.unbox(variables)["params"]["mask_emb"])
  np.testing.assert_array_equal(
    encoder_in_BxFxD[mask_BxF], np.broadcast_to(mask_emb, (mask_BxF.sum(), 24))
  )
  assert not np.any(np.all(encoder_in_BxFxD[~mask_BxF] == mask_emb, axis=-1))
  np.testing.assert_array_equal(encoder_paddings, out.frame_paddings)

  # The quantizer sees unmasked features and counts masked, unpadded frames only.
  (quantizer_in, weights_BxT), _ = calls["GumbelProductQuantizer"]
  assert quantizer_in.shape == features_BxFxC.shape
  np.testing.assert_array_equal(weights_BxT, mask_BxF & valid)


def test_all_masked_output_ignores_audio(tiny):
  _, _, apply = tiny
  audio_BxS, paddings_BxS, mask_BxF = _inputs()
  other_audio_BxS, _, _ = _inputs(seed=1)
  all_masked = np.ones_like(mask_BxF)
  out = apply(audio_BxS, paddings_BxS, all_masked)
  other = apply(other_audio_BxS, paddings_BxS, all_masked)
  np.testing.assert_array_equal(out.projected, other.projected)
  assert not np.allclose(out.targets, other.targets)
  unmasked = apply(other_audio_BxS, paddings_BxS, ~all_masked)
  assert not np.allclose(out.projected, unmasked.projected)


def test_padded_utterance_equals_unpadded(tiny):
  _, _, apply = tiny
  audio_BxS, paddings_BxS, mask_BxF = _inputs()
  batched = apply(audio_BxS, paddings_BxS, mask_BxF)
  frames = frontends.num_frames(700, TINY_LAYERS)
  alone = apply(audio_BxS[:1, :700], np.zeros((1, 700), np.float32), mask_BxF[:1, :frames])
  np.testing.assert_allclose(batched.projected[0, :frames], alone.projected[0], atol=1e-5)
  np.testing.assert_allclose(batched.targets[0, :frames], alone.targets[0], atol=1e-5)


def test_feature_grad_mult_scales_extractor_gradient(tiny):
  _, variables, _ = tiny
  audio_BxS, paddings_BxS, mask_BxF = _inputs()

  def grads(mult):
    model = wav2vec2.Wav2Vec2(**_tiny_config(feature_grad_mult=mult))

    def loss(params):
      out = model.apply(
        {"params": params}, audio_BxS, paddings_BxS, mask_BxF, train=False, gumbel_temperature=2.0
      )
      return jnp.sum(out.projected**2) + jnp.sum(out.targets**2) + out.feature_penalty

    return nn.unbox(jax.jit(jax.grad(loss))(variables["params"]))

  scaled, full, frozen = grads(0.1), grads(1.0), grads(0.0)
  for name in ("frontend", "encoder", "quantizer"):
    leaves = zip(jax.tree.leaves(scaled[name]), jax.tree.leaves(full[name]), strict=True)
    factor = 0.1 if name == "frontend" else 1.0
    for g_scaled, g_full in leaves:
      np.testing.assert_allclose(g_scaled, factor * np.asarray(g_full), rtol=1e-4, atol=1e-7)
  assert all(np.all(g == 0) for g in jax.tree.leaves(frozen["frontend"]))
  assert any(np.any(g != 0) for g in jax.tree.leaves(frozen["encoder"]))


def test_post_extract_proj_only_when_widths_differ():
  inputs = _inputs()
  same = jax.eval_shape(lambda: _init(wav2vec2.Wav2Vec2(**_tiny_config(embed_dim=16)), *inputs))
  differ = jax.eval_shape(lambda: _init(wav2vec2.Wav2Vec2(**_tiny_config()), *inputs))
  assert "post_extract_proj" not in same["params"]
  assert "post_extract_proj" in differ["params"]


def test_bfloat16_training_step_keeps_float32_params(tiny):
  _, variables, _ = tiny
  audio_BxS, paddings_BxS, mask_BxF = _inputs()
  model = wav2vec2.Wav2Vec2(**_tiny_config(), dtype=jnp.bfloat16)
  shapes = jax.eval_shape(lambda: _init(model, audio_BxS, paddings_BxS, mask_BxF))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nn.unbox(shapes)))

  def loss(params):
    out = model.apply(
      {"params": params},
      audio_BxS,
      paddings_BxS,
      mask_BxF,
      train=True,
      gumbel_temperature=jnp.float32(1.5),
      rngs={"dropout": jax.random.key(1), "gumbel": jax.random.key(2)},
    )
    return jnp.sum(out.projected * out.targets) + out.feature_penalty, out

  (value, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
  assert out.projected.dtype == jnp.float32 and out.targets.dtype == jnp.float32
  assert np.isfinite(float(value))
  leaves = jax.tree.leaves(nn.unbox(grads))
  assert all(g.dtype == jnp.float32 and np.all(np.isfinite(g)) for g in leaves)

  # The evaluation forward pass is bf16 arithmetic: near the float32 one, not equal to it.
  # bf16 keeps 8 significant bits: round to nearest errs by at most u = 2^-8 relative,
  # u/sqrt(3) RMS. The path to `projected` has about 20 roundings in sequence (3
  # convolutions, post_extract_proj, the two layers' attention and feed-forward matmuls,
  # casts after float32 norms and softmax); independent errors add as a random walk,
  # sqrt(20)·u/sqrt(3) = 2.6u relative RMS. Allowed: 4u RMS, and 8u of the largest value
  # for any element. Measured: 2.2u RMS, 3.3u worst. (Not `targets`: a rounding can flip
  # a frame's argmax codeword, a different codevector.)
  _, _, apply_f32 = tiny
  out_bf16 = jax.jit(
    lambda: model.apply(
      variables, audio_BxS, paddings_BxS, mask_BxF, train=False, gumbel_temperature=2.0
    )
  )()
  out_f32 = apply_f32(audio_BxS, paddings_BxS, mask_BxF)
  u = 2.0**-8
  valid = np.asarray(out_f32.frame_paddings) == 0
  ours = np.asarray(out_bf16.projected, np.float64)[valid]
  reference = np.asarray(out_f32.projected, np.float64)[valid]
  relative_rms = np.sqrt(np.mean((ours - reference) ** 2) / np.mean(reference**2))
  assert u / 16 < relative_rms < 4 * u  # not float32 arithmetic, and bf16's precision
  np.testing.assert_allclose(ours, reference, rtol=0, atol=8 * u * np.abs(reference).max())
  # The feature penalty is one mean of squares of bf16 features: a few u at most.
  np.testing.assert_allclose(out_bf16.feature_penalty, out_f32.feature_penalty, rtol=2 * u)


def test_every_parameter_has_logical_names():
  allowed = {"batch", "time", "embed", "mlp", "heads", "kv", "conv", "codebook", "vocab", None}
  shapes = jax.eval_shape(lambda: _init(wav2vec2.Wav2Vec2(**_tiny_config()), *_inputs()))
  boxed = jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert boxed and all(isinstance(x, nn.LogicallyPartitioned) for x in boxed)
  for box in boxed:
    assert len(box.names) == len(box.value.shape)
    assert set(box.names) <= allowed


# The logical-to-mesh rules the brief gives the trainer (sslax/core/sharding.py owns the
# real table); 'batch' comes before 'embed' so activations shard over batch only.
_RULES = (
  ("batch", ("data", "fsdp")),
  ("embed", "fsdp"),
  ("mlp", "tensor"),
  ("heads", "tensor"),
  ("vocab", "tensor"),
)


def test_sharded_forward_equals_single_device(tiny):
  model, variables, apply = tiny
  audio_BxS, paddings_BxS, mask_BxF = _inputs(batch=4)
  expected = apply(audio_BxS, paddings_BxS, mask_BxF)

  auto = (jax.sharding.AxisType.Auto,) * 3
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=auto)
  param_shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(variables), mesh, _RULES)
  sharded_variables = jax.device_put(variables, param_shardings)
  batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
  inputs = jax.device_put((audio_BxS, paddings_BxS, mask_BxF), batch_sharding)

  @jax.jit
  def sharded_apply(variables, audio_BxS, paddings_BxS, mask_BxF):
    return model.apply(
      variables, audio_BxS, paddings_BxS, mask_BxF, train=False, gumbel_temperature=2.0
    )

  # Activation constraints resolve against the mesh and rules in scope when tracing.
  with jax.set_mesh(mesh), nn.logical_axis_rules(_RULES):
    # Initialisation traces under the rules too (flax's DenseGeneral fails here).
    jax.eval_shape(lambda: _init(model, *inputs))
    out = sharded_apply(sharded_variables, *inputs)
  kernel = nn.unbox(sharded_variables)["params"]["encoder"]["layers_0"]["fc1"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  np.testing.assert_allclose(out.projected, expected.projected, atol=1e-5)
  np.testing.assert_allclose(out.targets, expected.targets, atol=1e-5)
  np.testing.assert_allclose(out.feature_penalty, expected.feature_penalty, rtol=1e-5)
