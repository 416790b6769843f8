"""Parameter counts and FLOPs of a config's wav2vec 2.0, HuBERT or BEST-RQ model, unallocated.

Command (from the repository root):
  python -m sslax.describe --config=configs/w2v_large.py

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
"""

import re

from absl import app, flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np

from sslax.interop import checkpoint
from sslax.models import backbone, bestrq, frontends, spectrogram

# wav2vec 2.0 is defined on 16 kHz audio.
SAMPLE_RATE_HZ = 16_000
# Training costs a forward and a backward of twice the forward's FLOPs.
TRAIN_FLOPS_PER_FORWARD = 3


def _is_bestrq(model_config: ml_collections.ConfigDict) -> bool:
  return "num_codebooks" in model_config


def variable_shapes(model_config: ml_collections.ConfigDict) -> dict:
  """Every variable collection of the config's model as jax.ShapeDtypeStruct leaves.

  'params', and with a batch-norm conformer 'batch_stats', with BEST-RQ 'frozen'.
  """
  if _is_bestrq(model_config):
    model, kwargs = bestrq.BestRQ(**model_config), {}
  else:
    model = checkpoint.build_model(model_config)
    kwargs = checkpoint.eval_kwargs(model_config)
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
    random projection, codeword scores); 'total'.
  """
  c = model_config
  flops, in_channels = _frontend_flops(c, num_samples)
  frames = backbone.num_frames(num_samples, c)
  d = c.embed_dim
  flops.update(_encoder_flops(c, frames))

  heads = in_channels * d if in_channels != d else 0  # post_extract_proj
  if _is_bestrq(c):
    heads += d * c.num_codebooks * c.codebook_size  # the G x V softmax head
    flops["bestrq_head"] = 2.0 * frames * heads
    mel_frames = spectrogram.num_mel_frames(num_samples)
    stacked = -(-mel_frames // c.target_stack)
    per_target = c.target_stack * c.mel_bins * c.num_codebooks * c.codebook_dim  # projection
    per_target += c.num_codebooks * c.codebook_size * c.codebook_dim  # codeword scores
    flops["bestrq_targets"] = 2.0 * stacked * per_target + _mel_filterbank_flops(c, num_samples)
  elif checkpoint.model_type(c) == "hubert":
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


def flops_per_audio_second(config: ml_collections.ConfigDict) -> dict[str, float]:
  """Forward FLOPs per second of audio at the crop length `config.data.max_samples`.

  Keys as `forward_flops`. Multiply by TRAIN_FLOPS_PER_FORWARD for training.
  """
  num_samples = config.data.max_samples
  seconds = num_samples / SAMPLE_RATE_HZ
  return {k: v / seconds for k, v in forward_flops(config.model, num_samples).items()}


def train_flops_per_audio_second(config: ml_collections.ConfigDict) -> float:
  """Training FLOPs (3 x forward) per second of audio at `config.data.max_samples` crops."""
  return TRAIN_FLOPS_PER_FORWARD * flops_per_audio_second(config)["total"]


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
  for name, value in flops_per_audio_second(config).items():
    lines.append(f"{name:<24}{value / 1e9:>14.2f}{TRAIN_FLOPS_PER_FORWARD * value / 1e9:>14.2f}")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  config = flags.FLAGS.config
  print(format_parameter_table(parameter_counts(config)))
  for name, count in state_counts(config).items():
    print(f"{'(not trained) ' + name:<40}{count:>16,}")
  print()
  print(format_flops_table(config))


if __name__ == "__main__":
  # Defined here, not at import, so that importing this module (benchmarks do) does not
  # clash with another module's --config flag.
  config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
  flags.mark_flag_as_required("config")
  app.run(main)
