"""Parameter counts, FLOPs and memory of wav2vec 2.0, HuBERT, BEST-RQ or CTC fine-tuning
configs, unallocated.

Commands (from the repository root):
  python -m sslax.describe --config=configs/w2v_large.py
  python -m sslax.describe --configs=configs/w2v_base.py,configs/w2v_large.py \
    --crop_seconds=20 --mesh=1,64,1
  python -m sslax.describe --configs=configs/ctc_base_10m.py,configs/ctc_large_960h.py

Prints parameters per module (top-level submodules and one level below) and training FLOPs
per second of audio (train = 3 x forward) at the config's crop length
`config.data.max_samples`. Expected (the architectures of Baevski et al. 2020, appendix
B): Base 95,044,608 parameters and 15.4 GFLOP forward per second of audio; Large
317,390,592 and 41.1 GFLOP. HuBERT (configs/hubert_base.py, hubert_large.py) has the same
backbone with its own head instead of the quantizer. Every frontend (waveform conv stack,
log mel + conv2d subsampling) and encoder (Transformer, conformer) of `config.model` is
counted, and BEST-RQ's head and frozen quantizer (whose variables are not parameters: they
are listed after the total).

FLOPs are analytic, 2 x multiply-adds of the matmuls and convolutions; norms, activations,
softmax and other elementwise work are left out. XLA's CPU cost analysis of the forward
pass counts 2.4% more for Base, 1.6% for Large and 10% for the demo model, almost all of
it the exact GELU (tests/test_describe.py checks this). Log mel: the mel filterbank matmul
and the subsampling convolutions count, the FFT does not. Conformer, per layer: both
feed-forwards, q/k/v/out, the convolution module's pointwise and depthwise convolutions,
attention scores and weighted values, and with relative positions the projection of the
2F-1 sinusoids and the scores against them; rotary rotations are elementwise. BEST-RQ:
the G x V head, and the quantizer's projection and codeword scores.

CTC fine-tuning configs (`config.job` 'finetune' or 'evaluate') leave the vocabulary to
the run (built from its transcripts, sslax/train/ctc_step.py `vocabulary`), so describe
gives `lm_head` `--vocab_size` tokens, by default 32: LibriSpeech's characters as sslax
builds them (4 special tokens, the word delimiter '|', 26 letters and the apostrophe), the
size of fairseq's letter dictionary with its specials and of transformers'
`Wav2Vec2Config`. Training FLOPs are 3 x forward except where no backward pass runs,
which costs its forward only: a frozen feature encoder (`model.feature_grad_mult` 0,
fairseq's fine-tuning) and BEST-RQ's targets (the frozen random-projection quantizer on the
input's own log-mel features). The figures are those after the freeze phase
(`optim.freeze_finetune_updates`), when everything but a frozen feature encoder trains.

`--configs` (comma-separated config files, each optionally FILE:ARG) prints one Markdown
table instead: parameters, training FLOPs per second of audio and activation memory per
example, both at `--crop_seconds` (0: each config's `data.max_samples`), and the memory per
device of the `--mesh` (data, fsdp, tensor sizes) training at the config's global batch.

Activation memory per example is what XLA's buffer assignment adds for one more example
to the compiled gradient of the config's objective (the training loss of
sslax/train/wav2vec2_step.py or the CTC loss, in `config.compute_dtype`): the compiled
temporary memory at batch 2 minus that at batch 1. Compiling every layer of a 2B model
would take minutes, so it is measured with 1, 2, 3, ... encoder layers until two
successive layers add the same bytes (within 5 %), then extrapolated linearly to
`num_layers` (each layer keeps the same tensors for the backward pass). Fewer layers would
mislead: at one or two layers a fixed transient can set the peak instead (a frozen feature
encoder's forward pass: CTC Base at 20 s crops adds 400, 399, 501, 646, 780, 914 MiB per
example at 1-6 layers, so the first two layers' slope would put all 12 at 0.38 GiB instead
of 1.7). tests/test_describe.py checks the rules against direct compilation. Nothing runs:
the functions are lowered from abstract shapes. The number is that of the backend describe
runs on: another compiler fuses and lays out buffers differently, so compare figures from
one backend.

Memory per device = parameters, gradients and Adam's two moments (four f32 copies; of a
frozen feature encoder, its parameters only), each leaf sharded as sslax/core/sharding.py's
rules shard it on the mesh, plus activations of
the examples each device holds at once: ceil(batch_size / (data x fsdp x grad_accum_steps))
times the per-example figure. Activations are not divided by `tensor` (an upper bound: the
rules split only the feed-forward and attention heads over it); XLA's workspace, the bf16
copies of parameters and the input pipeline are left out.
"""

import functools
import importlib.util
import math
import re

from absl import app, flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np

from sslax.core import sharding
from sslax.models import backbone, bestrq, frontends, spectrogram
from sslax.registry import model_types
from sslax.train import ctc_step, wav2vec2_step

# wav2vec 2.0 is defined on 16 kHz audio.
SAMPLE_RATE_HZ = 16_000
# Training costs a forward and a backward of twice the forward's FLOPs.
TRAIN_FLOPS_PER_FORWARD = 3
# Parameters, gradients, Adam's first and second moments: float32 each.
STATE_BYTES_PER_PARAMETER = 4 * 4
# A parameter that never trains (a frozen feature encoder) is held once, in float32.
FROZEN_BYTES_PER_PARAMETER = 4
# lm_head's tokens for a fine-tuning config (module docstring): LibriSpeech's characters.
DEFAULT_VOCAB_SIZE = 32
_FINETUNING_JOBS = ("finetune", "evaluate")
# `forward_flops` components of the feature encoder (waveform or log mel).
_FRONTEND_COMPONENTS = ("conv_extractor", "mel_filterbank", "subsampling_conv")
# Components no gradient flows through in any training run.
_FORWARD_ONLY_COMPONENTS = ("bestrq_targets",)
# Buffer assignment precedes code generation, so the cheapest code generation serves:
# unoptimised LLVM and XLA's elemental emitters instead of its MLIR fusion emitters (a
# 2-layer Base gradient: 14.3 s -> 7.2 s on a CPU, the same bytes per example).
_FAST_CODEGEN = {
  "xla_backend_optimization_level": 0,
  "xla_llvm_disable_expensive_passes": True,
  "xla_cpu_use_fusion_emitters": False,
}


def _is_bestrq(model_config: ml_collections.ConfigDict) -> bool:
  return "num_codebooks" in model_config


def with_vocabulary(
  config: ml_collections.ConfigDict, vocab_size: int = DEFAULT_VOCAB_SIZE
) -> ml_collections.ConfigDict:
  """A copy of a CTC fine-tuning config (`config.job` 'finetune' or 'evaluate') with
  `model.vocab_size` = `vocab_size`, which describe's functions need and such configs leave
  to the run's transcripts; any other config, or one that sets it, as it is."""
  if config.get("job") not in _FINETUNING_JOBS or "vocab_size" in config.model:
    return config
  if vocab_size < 2:
    raise ValueError(f"--vocab_size={vocab_size}: a CTC vocabulary has the blank and a token")
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.vocab_size = vocab_size
  return config


def _model_type(model_config: ml_collections.ConfigDict) -> str:
  """'bestrq', or the registry's 'wav2vec2', 'hubert' or 'ctc'; a fine-tuning model
  without its vocabulary is named as such."""
  if _is_bestrq(model_config):
    return "bestrq"
  if "final_dropout" in model_config and "vocab_size" not in model_config:
    raise ValueError(
      "config.model is a CTC model without vocab_size, which a fine-tuning run takes from "
      "its transcripts: pass the config through describe.with_vocabulary (the command's "
      "--vocab_size)"
    )
  return model_types.model_type(model_config)


def _frontend_trains(model_config: ml_collections.ConfigDict) -> bool:
  """False for a CTC model whose feature encoder is frozen (no gradient, no update)."""
  return _model_type(model_config) != "ctc" or model_config.feature_grad_mult > 0


def variable_shapes(model_config: ml_collections.ConfigDict) -> dict:
  """Every variable collection of the config's model as jax.ShapeDtypeStruct leaves.

  'params', and with a batch-norm conformer 'batch_stats', with BEST-RQ 'frozen'.
  """
  if _model_type(model_config) == "bestrq":
    model, kwargs = bestrq.BestRQ(**model_config), {}
  else:
    model = model_types.build_model(model_config)
    kwargs = model_types.eval_kwargs(model_config)
  # Shapes do not depend on the input length; one second is enough to trace.
  frames = backbone.num_frames(SAMPLE_RATE_HZ, model_config)
  audio = jnp.zeros((1, SAMPLE_RATE_HZ), jnp.float32)
  mask = jnp.zeros((1, frames), bool)
  variables = jax.eval_shape(
    lambda: model.init(jax.random.key(0), audio, audio, mask, train=False, **kwargs)
  )
  return nn.unbox(variables)


def parameter_shapes(model_config: ml_collections.ConfigDict) -> dict:
  """Parameter tree of the config's model as jax.ShapeDtypeStruct leaves (no memory)."""
  return variable_shapes(model_config)["params"]


def _size(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def parameter_counts(config: ml_collections.ConfigDict) -> dict[str, int]:
  """Parameter counts by module.

  Returns:
    {'frontend': n, 'frontend/conv_0': n, ..., 'encoder/layers_0': n, ..., 'total': n}:
    every top-level submodule (or parameter, e.g. 'mask_emb'), and the children of those
    that hold submodules (a Dense's kernel and bias are not listed), then the total.
  """
  params = parameter_shapes(config.model)
  counts = {}
  for name, subtree in params.items():
    counts[name] = _size(subtree)
    if isinstance(subtree, dict) and any(isinstance(t, dict) for t in subtree.values()):
      for child, child_tree in subtree.items():
        counts[f"{name}/{child}"] = _size(child_tree)
  counts["total"] = _size(params)
  return counts


def state_counts(config: ml_collections.ConfigDict) -> dict[str, int]:
  """Sizes of the model's variable collections other than params ('batch_stats', 'frozen')."""
  variables = variable_shapes(config.model)
  return {name: _size(tree) for name, tree in variables.items() if name != "params"}


def forward_flops(model_config: ml_collections.ConfigDict, num_samples: int) -> dict[str, float]:
  """Forward FLOPs (2 x multiply-adds) of one crop of `num_samples` samples, by component.

  Returns:
    The frontend's {'conv_extractor'} (waveform) or {'mel_filterbank', 'subsampling_conv'}
    (log mel); the encoder's {'transformer_matmuls' (q/k/v/out projections and FFN),
    'attention' (scores and weighted values), 'positional_conv'} (Transformer) or
    {'conformer_matmuls' (both FFNs, q/k/v/out, pointwise convolutions),
    'conformer_depthwise_conv', 'attention', 'relative_positions' (relative only)}; then
    for wav2vec 2.0 'quantizer_and_heads' (post_extract_proj, quantizer logits and
    codevector pick, project_q, final_proj), for HuBERT 'heads' (post_extract_proj,
    final_proj, cosines against every cluster embedding), for BEST-RQ 'bestrq_head'
    (post_extract_proj, G x V logits) and 'bestrq_targets' (the targets' mel filterbank,
    random projection, codeword scores), for CTC 'ctc_head' (post_extract_proj, lm_head);
    'total'.
  """
  c = model_config
  flops, in_channels = _frontend_flops(c, num_samples)
  frames = backbone.num_frames(num_samples, c)
  d = c.embed_dim
  flops.update(_encoder_flops(c, frames))

  heads = in_channels * d if in_channels != d else 0  # post_extract_proj
  kind = _model_type(c)
  if kind == "ctc":
    heads += d * c.vocab_size  # lm_head
    flops["ctc_head"] = 2.0 * frames * heads
  elif kind == "bestrq":
    heads += d * c.num_codebooks * c.codebook_size  # the G x V softmax head
    flops["bestrq_head"] = 2.0 * frames * heads
    mel_frames = spectrogram.num_mel_frames(num_samples)
    stacked = -(-mel_frames // c.target_stack)
    per_target = c.target_stack * c.mel_bins * c.num_codebooks * c.codebook_dim  # projection
    per_target += c.num_codebooks * c.codebook_size * c.codebook_dim  # codeword scores
    flops["bestrq_targets"] = 2.0 * stacked * per_target + _mel_filterbank_flops(c, num_samples)
  elif kind == "hubert":
    num_sets = len(c.num_classes)
    heads += d * c.final_dim * (num_sets if c.untie_final_proj else 1)  # final_proj
    heads += c.final_dim * sum(c.num_classes)  # cosines with every label embedding
    flops["heads"] = 2.0 * frames * heads
  else:
    vq_dim = c.latent_dim if c.latent_dim > 0 else c.final_dim
    num_codevectors = c.latent_groups * c.latent_vars
    heads += in_channels * num_codevectors  # quantizer logits
    # One-hot times codevectors, as the codebook einsum computes it.
    heads += num_codevectors * (vq_dim // c.latent_groups)
    heads += vq_dim * c.final_dim  # project_q
    heads += d * c.final_dim  # final_proj
    flops["quantizer_and_heads"] = 2.0 * frames * heads

  flops["total"] = sum(flops.values())
  return flops


def _mel_filterbank_flops(c: ml_collections.ConfigDict, num_samples: int) -> float:
  mel = spectrogram.LogMelFrontend()
  mel_frames = spectrogram.num_mel_frames(num_samples, mel.frame_length, mel.frame_step)
  return 2.0 * mel_frames * (mel.fft_size // 2 + 1) * c.mel_bins


def _frontend_flops(c: ml_collections.ConfigDict, num_samples: int) -> tuple[dict, int]:
  """({component: forward FLOPs}, feature channels) of `c.frontend` on one crop."""
  if c.frontend == "logmel":
    conv = 0.0
    length = spectrogram.num_mel_frames(num_samples)
    bins, in_channels = c.mel_bins, 1
    for _ in range(round(np.log2(c.mel_subsampling))):
      length, bins = (length + 1) // 2, (bins + 1) // 2  # stride 2, kernel 3, padding 1
      conv += 2.0 * length * bins * 9 * in_channels * c.mel_conv_channels
      in_channels = c.mel_conv_channels
    features = in_channels * bins
    return {"mel_filterbank": _mel_filterbank_flops(c, num_samples), "subsampling_conv": conv}, (
      features
    )
  conv = 0.0
  length, in_channels = num_samples, 1
  for channels, kernel, stride in c.conv_layers:
    length = frontends.num_frames(length, [(channels, kernel, stride)])
    conv += 2.0 * length * kernel * in_channels * channels
    in_channels = channels
  return {"conv_extractor": conv}, in_channels


def _encoder_flops(c: ml_collections.ConfigDict, frames: int) -> dict:
  """{component: forward FLOPs} of `c.encoder` over `frames` frames."""
  d, layers = c.embed_dim, c.num_layers
  if c.encoder == "conformer":
    # Two feed-forwards, q/k/v/out, pointwise in (to 2D for the GLU) and out.
    matmuls = 2 * 2 * d * c.mlp_dim + 4 * d * d + 3 * d * d
    flops = {
      "conformer_matmuls": layers * 2.0 * frames * matmuls,
      "conformer_depthwise_conv": layers * 2.0 * frames * c.conformer_conv_kernel * d,
      "attention": layers * 2.0 * 2 * frames * frames * d,
    }
    if c.conformer_position_embeddings == "relative":
      positions = 2 * frames - 1
      # Projection of the sinusoids, then every query against every relative position.
      flops["relative_positions"] = layers * 2.0 * (positions * d * d + frames * positions * d)
    return flops
  return {
    "transformer_matmuls": layers * 2.0 * frames * (4 * d * d + 2 * d * c.mlp_dim),
    "attention": layers * 2.0 * 2 * frames * frames * d,
    "positional_conv": 2.0 * frames * c.pos_conv_kernel * d * (d // c.pos_conv_groups),
  }


def train_flops(model_config: ml_collections.ConfigDict, num_samples: int) -> dict[str, float]:
  """Training FLOPs of one crop of `num_samples` samples, by component (keys as
  `forward_flops`): TRAIN_FLOPS_PER_FORWARD x forward, the forward only where no backward
  pass runs: BEST-RQ's targets (a frozen projection of the input's own features) and a
  frozen feature encoder (a CTC model with `feature_grad_mult` 0).
  """
  forward = forward_flops(model_config, num_samples)
  forward_only = _FORWARD_ONLY_COMPONENTS
  if not _frontend_trains(model_config):
    forward_only += _FRONTEND_COMPONENTS
  flops = {
    name: value * (1 if name in forward_only else TRAIN_FLOPS_PER_FORWARD)
    for name, value in forward.items()
    if name != "total"
  }
  flops["total"] = sum(flops.values())
  return flops


def _per_audio_second(config: ml_collections.ConfigDict, flops_fn) -> dict[str, float]:
  num_samples = config.data.max_samples
  seconds = num_samples / SAMPLE_RATE_HZ
  return {k: v / seconds for k, v in flops_fn(config.model, num_samples).items()}


def flops_per_audio_second(config: ml_collections.ConfigDict) -> dict[str, float]:
  """Forward FLOPs per second of audio at the crop length `config.data.max_samples`.

  Keys as `forward_flops`.
  """
  return _per_audio_second(config, forward_flops)


def train_flops_per_audio_second(config: ml_collections.ConfigDict) -> float:
  """Training FLOPs (`train_flops`) per second of audio at `config.data.max_samples` crops."""
  return _per_audio_second(config, train_flops)["total"]


def format_parameter_table(counts: dict[str, int]) -> str:
  """Readable table of `parameter_counts`; runs of numbered layers are collapsed."""
  lines = [f"{'module':<40}{'parameters':>16}"]
  children = [k for k in counts if "/" in k]
  for name, count in counts.items():
    if "/" in name or name == "total":
      continue
    lines.append(f"{name:<40}{count:>16,}")
    groups = {}
    for key in children:
      parent, child = key.split("/", 1)
      if parent == name:
        groups.setdefault(re.sub(r"_\d+$", "_*", child), []).append(counts[key])
    for child, sizes in groups.items():
      label = f"  {child}"
      if len(sizes) > 1:
        each = f" x {sizes[0]:,}" if len(set(sizes)) == 1 else ""
        label += f" ({len(sizes)}{each})"
      lines.append(f"{label:<40}{sum(sizes):>16,}")
  lines.append(f"{'total':<40}{counts['total']:>16,}")
  return "\n".join(lines)


def format_flops_table(config: ml_collections.ConfigDict) -> str:
  """Readable table of `flops_per_audio_second`, forward and train, in GFLOP per second."""
  num_samples = config.data.max_samples
  frames = backbone.num_frames(num_samples, config.model)
  lines = [
    f"FLOPs per second of audio at {num_samples:,}-sample crops "
    f"({num_samples / SAMPLE_RATE_HZ:.2f} s, {frames} frames)",
    f"{'component':<24}{'forward GF/s':>14}{'train GF/s':>14}",
  ]
  train = _per_audio_second(config, train_flops)
  for name, value in flops_per_audio_second(config).items():
    lines.append(f"{name:<24}{value / 1e9:>14.2f}{train[name] / 1e9:>14.2f}")
  return "\n".join(lines)


def load_config(spec: str) -> ml_collections.ConfigDict:
  """The config of 'FILE' or 'FILE:ARG' (as --config takes them): FILE's get_config(ARG)."""
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("describe_config", path)
  if module_spec is None:
    raise ValueError(f"--configs: {path!r} is not a Python config file")
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except FileNotFoundError:
    raise ValueError(f"--configs: no config file {path!r}") from None
  if not hasattr(module, "get_config"):
    raise ValueError(f"--configs: {path!r} has no get_config(): not a config file")
  return module.get_config(arg) if arg else module.get_config()


def _with_layers(config: ml_collections.ConfigDict, num_layers: int) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.num_layers = num_layers
  return config


def _abstract_batch(config: ml_collections.ConfigDict, batch: int, num_samples: int) -> dict:
  frames = backbone.num_frames(num_samples, config.model)
  batch_shapes = {
    "audio": jax.ShapeDtypeStruct((batch, num_samples), jnp.float32),
    "audio_paddings": jax.ShapeDtypeStruct((batch, num_samples), jnp.float32),
    "mask": jax.ShapeDtypeStruct((batch, frames), bool),
  }
  if _model_type(config.model) == "ctc":
    labels = config.data.max_label_length
    batch_shapes["channel_mask"] = jax.ShapeDtypeStruct((batch, config.model.embed_dim), bool)
    batch_shapes["labels"] = jax.ShapeDtypeStruct((batch, labels), jnp.int32)
    batch_shapes["label_paddings"] = jax.ShapeDtypeStruct((batch, labels), jnp.float32)
  elif config.objective.name == "hubert":
    labels = -(-num_samples * config.units.label_rate // SAMPLE_RATE_HZ)
    batch_shapes["labels"] = jax.ShapeDtypeStruct((batch, labels), jnp.int32)
  return batch_shapes


def _training_gradient(config: ml_collections.ConfigDict) -> tuple:
  """(gradient(params, model_state, microbatch, rng), abstract params, abstract model
  state) of the config's training loss: the pretraining objective, or the CTC loss with
  everything but a frozen feature encoder trained (after the freeze phase)."""
  if _model_type(config.model) == "ctc":
    model = ctc_step.build_model(config, config.model.vocab_size)
    variables = nn.unbox(jax.eval_shape(ctc_step.init_variables_fn(model), jax.random.key(0)))
    params = variables.pop("params")
    trained = ctc_step.trained_params(params, config)
    loss_fn = functools.partial(ctc_step.make_loss_fn(model), trained=trained)
    return jax.grad(loss_fn, has_aux=True), params, variables
  model = wav2vec2_step.build_model(config)
  variables = nn.unbox(jax.eval_shape(wav2vec2_step.init_variables_fn(model), jax.random.key(0)))
  params = variables.pop("params")
  loss_fn, scalars_fn = wav2vec2_step.objective_fns(model, config, num_shards=1)
  grad_fn = jax.grad(loss_fn, has_aux=True)

  def gradient(params, model_state, microbatch, rng):
    return grad_fn(params, model_state, microbatch, rng, scalars_fn(jnp.zeros((), jnp.int32)))

  return gradient, params, variables


def compiled_gradient_temp_bytes(
  config: ml_collections.ConfigDict, batch: int, num_samples: int
) -> int:
  """XLA's temporary memory (bytes) of the compiled gradient of the config's training loss
  for `batch` crops of `num_samples` samples; lowered from shapes, never run."""
  gradient, params, variables = _training_gradient(config)
  rng = jax.eval_shape(lambda: jax.random.key(0))
  lowered = jax.jit(gradient).lower(
    params, variables, _abstract_batch(config, batch, num_samples), rng
  )
  compiled = lowered.compile(compiler_options=_FAST_CODEGEN)
  return int(compiled.memory_analysis().temp_size_in_bytes)


def activation_bytes_per_example(
  config: ml_collections.ConfigDict,
  num_samples: int,
  *,
  tolerance: float = 0.05,
  max_layers: int = 8,
) -> float:
  """Bytes one more example adds to the compiled gradient (module docstring).

  Measured (temp at batch 2 minus batch 1) at 1, 2, 3, ... encoder layers until the last
  two layers each added the same positive bytes within `tolerance` (relative), then
  extrapolated linearly with that slope to `config.model.num_layers`; exact if that many
  layers are reached first. At most `max_layers` layers are compiled (then the last slope).
  """
  num_layers = config.model.num_layers
  measured = []
  for layers in range(1, min(num_layers, max_layers) + 1):
    small = _with_layers(config, layers)
    measured.append(
      compiled_gradient_temp_bytes(small, 2, num_samples)
      - compiled_gradient_temp_bytes(small, 1, num_samples)
    )
    if len(measured) >= 3:
      slope, before = measured[-1] - measured[-2], measured[-2] - measured[-3]
      if slope > 0 and abs(slope - before) <= tolerance * slope:
        break
  if len(measured) == num_layers:
    return measured[-1]
  slope = measured[-1] - measured[-2]
  return measured[-1] + slope * (num_layers - len(measured))


def _local_size(leaf, mesh: dict[str, int]) -> int:
  """Elements of one device's shard of a (boxed) parameter leaf, padded as XLA pads."""
  names = leaf.names if isinstance(leaf, nn.Partitioned) else ()
  shape = nn.unbox(leaf).shape
  mesh_axes = nn.logical_to_mesh_axes(names, sharding.LOGICAL_AXIS_RULES) if names else ()
  mesh_axes = tuple(mesh_axes) + (None,) * (len(shape) - len(mesh_axes))
  local = 1
  for dim, axes in zip(shape, mesh_axes, strict=True):
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    local *= -(-dim // math.prod(mesh[axis] for axis in axes))
  return local


def state_bytes_per_device(config: ml_collections.ConfigDict, mesh: dict[str, int]) -> int:
  """Bytes of parameters, gradients and Adam moments (f32) one device holds when each
  parameter is sharded by sharding.LOGICAL_AXIS_RULES over `mesh` ({'data': n, 'fsdp': n,
  'tensor': n}); a dimension that does not divide is padded, as XLA pads it. A frozen
  feature encoder (CTC fine-tuning) holds its parameters only."""
  if _model_type(config.model) == "ctc":
    model = ctc_step.build_model(config, config.model.vocab_size)
    boxed = jax.eval_shape(ctc_step.init_variables_fn(model), jax.random.key(0))["params"]
    trained = set(ctc_step.trained_params(boxed, config))
  else:
    model = wav2vec2_step.build_model(config)
    boxed = jax.eval_shape(wav2vec2_step.init_params_fn(model), jax.random.key(0))
    trained = set(boxed)
  total = 0
  for name, subtree in boxed.items():
    per_element = STATE_BYTES_PER_PARAMETER if name in trained else FROZEN_BYTES_PER_PARAMETER
    leaves = jax.tree.leaves(subtree, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    total += per_element * sum(_local_size(leaf, mesh) for leaf in leaves)
  return total


def examples_per_device(config: ml_collections.ConfigDict, mesh: dict[str, int]) -> int:
  """Crops one device holds in one microbatch: the global batch over data x fsdp x accum."""
  return -(-config.data.batch_size // (mesh["data"] * mesh["fsdp"] * config.grad_accum_steps))


def compare(
  configs: dict[str, ml_collections.ConfigDict], crop_seconds: float, mesh: dict[str, int]
) -> list[dict]:
  """One row per config: {'config', 'parameters', 'train_flops_per_second' (per second of
  audio), 'crop_samples', 'activation_bytes' (per example), 'examples_per_device',
  'state_bytes' and 'device_bytes' (per device of `mesh`)}, at crops of `crop_seconds`
  (0: the config's data.max_samples)."""
  rows = []
  for name, config in configs.items():
    num_samples = round(crop_seconds * SAMPLE_RATE_HZ) or config.data.max_samples
    seconds = num_samples / SAMPLE_RATE_HZ
    activations = activation_bytes_per_example(config, num_samples)
    examples = examples_per_device(config, mesh)
    state = state_bytes_per_device(config, mesh)
    rows.append(
      dict(
        config=name,
        parameters=_size(parameter_shapes(config.model)),
        train_flops_per_second=train_flops(config.model, num_samples)["total"] / seconds,
        crop_samples=num_samples,
        activation_bytes=activations,
        examples_per_device=examples,
        state_bytes=state,
        device_bytes=state + examples * activations,
      )
    )
  return rows


def format_comparison(rows: list[dict], mesh: dict[str, int]) -> str:
  """Markdown table of `compare`'s rows; memory in GiB (2^30 bytes)."""
  gib = 2.0**30
  mesh_text = "x".join(f"{mesh[axis]}" for axis in sharding.MESH_AXES)
  lines = [
    f"| config | parameters | train GFLOP / s of audio | crop (s) | activations / example "
    f"(GiB) | examples / device | params+grads+Adam / device (GiB) | total / device (GiB), "
    f"mesh {mesh_text} |",
    "|---|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for r in rows:
    lines.append(
      f"| {r['config']} | {r['parameters']:,} | {r['train_flops_per_second'] / 1e9:.1f} | "
      f"{r['crop_samples'] / SAMPLE_RATE_HZ:.2f} | {r['activation_bytes'] / gib:.2f} | "
      f"{r['examples_per_device']} | {r['state_bytes'] / gib:.2f} | "
      f"{r['device_bytes'] / gib:.2f} |"
    )
  return "\n".join(lines)


def parse_mesh(values: list[str]) -> dict[str, int]:
  """--mesh=DATA,FSDP,TENSOR as {'data': n, 'fsdp': n, 'tensor': n} of positive sizes."""
  if len(values) != len(sharding.MESH_AXES) or not all(v.isdigit() and int(v) > 0 for v in values):
    raise app.UsageError(f"--mesh={','.join(values)}: expected three positive sizes D,F,T")
  return dict(zip(sharding.MESH_AXES, (int(v) for v in values), strict=True))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  vocab_size = flags.FLAGS.vocab_size
  if flags.FLAGS.configs:
    configs = {spec: with_vocabulary(load_config(spec), vocab_size) for spec in flags.FLAGS.configs}
    mesh = parse_mesh(flags.FLAGS.mesh)
    print(format_comparison(compare(configs, flags.FLAGS.crop_seconds, mesh), mesh))
    return
  config = flags.FLAGS.config
  if config is None:
    raise app.UsageError("give --config=FILE or --configs=FILE,FILE,...")
  config = with_vocabulary(config, vocab_size)
  print(format_parameter_table(parameter_counts(config)))
  for name, count in state_counts(config).items():
    print(f"{'(not trained) ' + name:<40}{count:>16,}")
  print()
  print(format_flops_table(config))


if __name__ == "__main__":
  # Defined here, not at import, so that importing this module (benchmarks do) does not
  # clash with another module's --config flag.
  config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
  flags.DEFINE_list("configs", [], "Config files (FILE or FILE:ARG) to compare in one table.")
  flags.DEFINE_float("crop_seconds", 0.0, "--configs: crop length; 0: each data.max_samples.")
  flags.DEFINE_list("mesh", ["1", "1", "1"], "--configs: mesh sizes DATA,FSDP,TENSOR.")
  flags.DEFINE_integer(
    "vocab_size",
    DEFAULT_VOCAB_SIZE,
    "CTC fine-tuning configs: lm_head's tokens (the run's "
    "vocabulary; default LibriSpeech's characters with the 4 special tokens).",
  )
  app.run(main)
