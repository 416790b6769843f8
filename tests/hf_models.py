"""What the transformers parity tests share: the published Large architecture's fields,
random models moved off their initialisation, padded batches of noise."""

import numpy as np
import torch

# facebook/wav2vec2-large-lv60 (Baevski et al. 2020's Large, fairseq's
# wav2vec2_large_librivox): transformers config fields of its encoder, with the layer-norm
# extractor (conv bias) and pre-LN Transformer; the same for its fine-tuned and conformer
# relatives (whose config ignores `do_stable_layer_norm`).
LARGE_ENCODER = dict(
  hidden_size=1024,
  num_hidden_layers=24,
  num_attention_heads=16,
  intermediate_size=4096,
  feat_extract_norm="layer",
  conv_bias=True,
  do_stable_layer_norm=True,
)
# Its pretraining head: the quantizer's and final projection's widths.
LARGE_QUANTIZER = dict(codevector_dim=768, proj_codevector_dim=768)


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
  """`model` with every parameter moved by 0.1 x N(0, 1) and any batch norm's running
  statistics off (0, 1) (mean 0.3 x N(0, 1), variance U(0.5, 1.5)), so that every tensor
  of a map counts; draws from torch's global generator."""
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
    for name, buffer in model.named_buffers():
      if name.endswith("running_mean"):
        buffer.copy_(0.3 * torch.randn_like(buffer))
      elif name.endswith("running_var"):
        buffer.copy_(torch.rand_like(buffer) + 0.5)
  return model


def padded_noise(lengths: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(audio f32[B, S], paddings f32[B, S]): standard normal samples, row b valid for its
  first lengths[b] samples and zero (paddings 1.0) after; S = max(lengths)."""
  rng = np.random.default_rng(seed)
  audio_BxS = rng.normal(size=(len(lengths), max(lengths))).astype(np.float32)
  paddings_BxS = np.zeros_like(audio_BxS)
  for b, n in enumerate(lengths):
    audio_BxS[b, n:] = 0.0
    paddings_BxS[b, n:] = 1.0
  return audio_BxS, paddings_BxS
