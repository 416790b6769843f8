"""Parameter counts and FLOPs of a config's wav2vec 2.0 model, without allocating it.

Command (from the repository root):
  python -m sslax.describe --config=configs/w2v_large.py

Prints parameters per module (top-level submodules and one level below) and training
FLOPs per second of audio (train = 3 x forward) at the config's crop length
`config.data.max_samples`. Expected: Base 95,044,608 parameters and 15.4 GFLOP forward per
second of audio; Large 317,390,592 and 41.1 GFLOP (REFERENCE.md).

FLOPs are analytic, 2 x multiply-adds of the matmuls and convolutions; norms, activations,
softmax and other elementwise work are left out. XLA's CPU cost analysis of the forward
pass counts 2.4% more for Base, 1.6% for Large and 10% for the demo model, almost all of
it the exact GELU (tests/test_describe.py checks this).
"""

import re

from absl import app, flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np

from sslax.models import frontends, wav2vec2

# wav2vec 2.0 is defined on 16 kHz audio.
SAMPLE_RATE_HZ = 16_000
# Training costs a forward and a backward of twice the forward's FLOPs.
TRAIN_FLOPS_PER_FORWARD = 3


def parameter_shapes(model_config: ml_collections.ConfigDict) -> dict:
  """Parameter tree of `Wav2Vec2(**model_config)` as jax.ShapeDtypeStruct leaves (no memory)."""
  model = wav2vec2.Wav2Vec2(**model_config)
  # Parameter shapes do not depend on the input length; one second is enough to trace.
  num_samples = SAMPLE_RATE_HZ
  frames = frontends.num_frames(num_samples, model_config.conv_layers)
  variables = jax.eval_shape(
    lambda: model.init(
      jax.random.key(0),
      jnp.zeros((1, num_samples), jnp.float32),
      jnp.zeros((1, num_samples), jnp.float32),
      jnp.zeros((1, frames), bool),
      train=False,
      gumbel_temperature=1.0,
    )
  )
  return nn.unbox(variables)["params"]


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


def forward_flops(model_config: ml_collections.ConfigDict, num_samples: int) -> dict[str, float]:
  """Forward FLOPs (2 x multiply-adds) of one crop of `num_samples` samples, by component.

  Returns:
    {'conv_extractor', 'transformer_matmuls' (q/k/v/out projections and FFN),
     'attention' (scores and weighted values), 'positional_conv',
     'quantizer_and_heads' (post_extract_proj, quantizer logits and codevector pick,
     project_q, final_proj), 'total'}.
  """
  c = model_config
  flops = {}

  conv = 0.0
  length, in_channels = num_samples, 1
  for channels, kernel, stride in c.conv_layers:
    length = frontends.num_frames(length, [(channels, kernel, stride)])
    conv += 2.0 * length * kernel * in_channels * channels
    in_channels = channels
  flops["conv_extractor"] = conv

  frames = frontends.num_frames(num_samples, c.conv_layers)
  d = c.embed_dim
  flops["transformer_matmuls"] = c.num_layers * 2.0 * frames * (4 * d * d + 2 * d * c.mlp_dim)
  flops["attention"] = c.num_layers * 2.0 * 2 * frames * frames * d
  flops["positional_conv"] = 2.0 * frames * c.pos_conv_kernel * d * (d // c.pos_conv_groups)

  vq_dim = c.latent_dim if c.latent_dim > 0 else c.final_dim
  num_codevectors = c.latent_groups * c.latent_vars
  heads = in_channels * d if in_channels != d else 0  # post_extract_proj
  heads += in_channels * num_codevectors  # quantizer logits
  # One-hot times codevectors, as the codebook einsum computes it.
  heads += num_codevectors * (vq_dim // c.latent_groups)
  heads += vq_dim * c.final_dim  # project_q
  heads += d * c.final_dim  # final_proj
  flops["quantizer_and_heads"] = 2.0 * frames * heads

  flops["total"] = sum(flops.values())
  return flops


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
  frames = frontends.num_frames(num_samples, config.model.conv_layers)
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
  print()
  print(format_flops_table(config))


if __name__ == "__main__":
  # Defined here, not at import, so that importing this module (benchmarks do) does not
  # clash with another module's --config flag.
  config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
  flags.mark_flag_as_required("config")
  app.run(main)
