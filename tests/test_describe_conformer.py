"""sslax.describe for conformer encoders, log-mel frontends and BEST-RQ (issue 6 configs)."""

import importlib.util
import pathlib
import subprocess
import sys

import flax.linen as nn
import hf_models
import jax
import jax.numpy as jnp
import pytest
import torch
import transformers

from configs import demo_conformer, w2v_conformer_large, w2v_logmel_conformer
from sslax import describe
from sslax.train import wav2vec2_step

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config_file(name: str):
  """get_config() of configs/NAME.py (bestrq_conformer_0.6b.py has a dot: load by path)."""
  spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_conformer_large_parameters_match_transformers():
  """transformers' Wav2Vec2ConformerForPreTraining with fairseq's conformer-large settings.

  transformers builds a convolutional positional embedding it never calls (nor does
  fairseq's conformer have one); every other parameter has a counterpart here.
  """
  hf_config = transformers.Wav2Vec2ConformerConfig(
    **hf_models.LARGE_ENCODER,
    **hf_models.LARGE_QUANTIZER,
    position_embeddings_type="relative",
    conv_depthwise_kernel_size=31,
  )
  with torch.device("meta"):
    hf_model = transformers.Wav2Vec2ConformerForPreTraining(hf_config)
  expected = sum(
    p.numel() for name, p in hf_model.named_parameters() if "pos_conv_embed" not in name
  )
  config = w2v_conformer_large.get_config()
  counts = describe.parameter_counts(config)
  assert counts["total"] == expected == 612_121_216
  # Running mean and variance per layer (PyTorch's buffers, not parameters).
  assert describe.state_counts(config) == {"batch_stats": 24 * 2 * 1024}


def test_flops_hand_computed_logmel_rotary_conformer():
  # 250,000 samples -> 1563 log-mel frames -> one stride-2 conv -> 782 frames, 40 bins.
  flops = describe.forward_flops(w2v_logmel_conformer.get_config().model, 250_000)
  assert flops["mel_filterbank"] == 2 * 1563 * 257 * 80
  assert flops["subsampling_conv"] == 2 * 782 * 40 * 9 * 1 * 32
  d, m = 1024, 4096
  assert flops["conformer_matmuls"] == 24 * 2 * 782 * (4 * d * m + 7 * d * d)
  assert flops["conformer_depthwise_conv"] == 24 * 2 * 782 * 31 * d
  assert flops["attention"] == 24 * 2 * 2 * 782**2 * d
  assert "relative_positions" not in flops  # rotary: elementwise rotations only
  assert "positional_conv" not in flops  # the conformer has none
  assert flops["quantizer_and_heads"] == 2 * 782 * (
    1280 * d + 1280 * 640 + 640 * 384 + 768 * 768 + d * 768
  )


def test_flops_hand_computed_bestrq_0_6b():
  config = _config_file("bestrq_conformer_0.6b")
  # 320,000 samples -> 2001 log-mel frames -> 1001 -> 501 frames of 40 ms.
  flops = describe.forward_flops(config.model, 320_000)
  d = 1024
  assert flops["relative_positions"] == 24 * 2 * (1001 * d * d + 501 * 1001 * d)
  assert flops["bestrq_head"] == 2 * 501 * (256 * 20 * d + d * 16 * 8192)
  # Targets: 501 stacks of 4 frames, 16 projections to 16 dims, 16 x 8192 codeword scores.
  quantizer = 2 * 501 * (4 * 80 * 16 * 16 + 16 * 8192 * 16)
  assert flops["bestrq_targets"] == quantizer + 2 * 2001 * 257 * 80
  # The targets are computed once, with no backward pass; the rest costs 3 x forward.
  train = describe.train_flops(config.model, 320_000)
  assert train["bestrq_targets"] == flops["bestrq_targets"]
  body = flops["total"] - flops["bestrq_targets"]
  assert train["total"] == pytest.approx(3 * body + flops["bestrq_targets"], rel=1e-12)
  counts = describe.parameter_counts(config)
  assert counts["head"] == d * 16 * 8192 + 16 * 8192
  assert 0.6e9 < counts["encoder"] < 0.61e9  # "0.6B"
  assert describe.state_counts(config)["frozen"] == 16 * (4 * 80 * 16 + 8192 * 16)


# XLA's count of the forward pass over the analytic one, for the demo variants. The
# formula counts matmuls and convolutions; XLA adds every elementwise op. Measured on
# CPU: waveform + conformer 1.059 (the conv extractor's exact GELU, as for the
# Transformer demo in test_describe.py), log mel 1.019, BEST-RQ 1.003 (its larger head
# dilutes the elementwise share). Stated tolerance: [1, 1.08] and [1, 1.03]; below 1
# would mean the formula counts work XLA does not do.
@pytest.mark.parametrize("variant, upper", [("w2v", 1.08), ("logmel", 1.03), ("bestrq", 1.03)])
def test_formula_agrees_with_xla_cost_analysis(variant, upper):
  config = demo_conformer.get_config(variant)
  model = wav2vec2_step.build_model(config)
  num_samples = config.data.max_samples
  frames = wav2vec2_step.frames_fn(config)(num_samples)
  variables = nn.unbox(jax.eval_shape(wav2vec2_step.init_variables_fn(model), jax.random.key(0)))
  extra = {} if variant == "bestrq" else {"gumbel_temperature": 1.0}

  def forward(variables, audio, mask):
    return model.apply(variables, audio, audio, mask, train=False, **extra)

  audio, mask = jnp.zeros((1, num_samples)), jnp.zeros((1, frames), bool)
  xla = jax.jit(forward).lower(variables, audio, mask).compile().cost_analysis()["flops"]
  formula = describe.forward_flops(config.model, num_samples)["total"]
  assert 1.0 <= xla / formula <= upper


def test_command_line_describes_bestrq_with_its_frozen_variables():
  result = subprocess.run(
    [sys.executable, "-m", "sslax.describe", "--config=configs/bestrq_conformer_0.6b.py"],
    capture_output=True,
    text=True,
    check=True,
    timeout=180,
    cwd=ROOT,
  )
  assert "(not trained) frozen" in result.stdout and "2,179,072" in result.stdout
  assert "20.00 s, 501 frames" in result.stdout
  total_line = [line for line in result.stdout.splitlines() if line.startswith("total ")][-1]
  forward, train = (float(v) for v in total_line.split()[1:])
  flops = describe.flops_per_audio_second(_config_file("bestrq_conformer_0.6b"))
  assert forward == pytest.approx(flops["total"] / 1e9, abs=0.01)
  targets = flops["bestrq_targets"] / 1e9  # forward only (no gradient reaches them)
  assert train == pytest.approx(3 * (forward - targets) + targets, abs=0.02)


@pytest.mark.parametrize(
  "name",
  ["w2v_conformer_large", "w2v_logmel_conformer", "bestrq_conformer_0.6b", "hubert_conformer"],
)
def test_every_issue6_config_is_described(name):
  config = _config_file(name)
  counts = describe.parameter_counts(config)
  top = {k: v for k, v in counts.items() if "/" not in k and k != "total"}
  assert sum(top.values()) == counts["total"]
  layers = [k for k in counts if k.startswith("encoder/layers_")]
  assert len(layers) == config.model.num_layers
  flops = describe.flops_per_audio_second(config)
  assert flops["total"] == pytest.approx(sum(v for k, v in flops.items() if k != "total"))
  table = describe.format_flops_table(config)
  assert f"{wav2vec2_step.frames_fn(config)(config.data.max_samples)} frames" in table
