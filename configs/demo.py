"""A small wav2vec 2.0 pretrained on the embedded demo corpus, on a laptop-class CPU.

Command:
  python -m sslax.main --config=configs/demo.py --workdir=/tmp/sslax-demo

fairseq's algorithms (Baevski et al. 2020; examples/wav2vec/config/pretraining/
wav2vec2_base_librispeech.yaml): the objective, K = 100 distractors from the same
utterance, the Gumbel product quantizer, span masks of 10 frames drawn per row, the
diversity loss and the feature penalty. Scaled to 40 minutes of audio and 2 CPU cores,
each change measured one at a time against the arm before it (benchmarks/RESULTS.md, "Demo
pretraining that leaves the plateau", has every arm, curve and command; accuracies are the
last training line / the dev split's validation, K = 100):

- masks drawn per row, as fairseq's sampler draws them. Alone, Base shrunk to 3.8M
  parameters (`shrunk_base()` below) stays at chance (0.016 at step 160).
- codebook 2 x 320 -> 2 x 8 codewords: 2 x 16 alone leaves the plateau by step 90 where
  2 x 320 never does; 2 x 8 leaves 20 steps earlier still.
- model 3.8M -> 237,504 parameters: a 32-channel feature encoder and a 4-layer, 64-wide
  Transformer (FFN 256, 4 heads), final_dim 16. The 3.8M and 0.9M models stall near 0.12
  with their targets clustered; a 2 x 32 Transformer reaches 0.248 / 0.259 where this one
  reaches 0.269 / 0.281 (mask_prob 0.3); 128 wide stays on the plateau 40 steps longer.
- batch 8 x 5 s -> 32 x 2 s crops; 16 x 2 s for 1000 steps (the same CPU time) is lower
  at equal audio (0.238 at step 680 against 0.257).
- lr 1e-3 -> 2e-3 with a 2-step warmup: 2e-3 leaves the plateau where 1e-3 has not by
  step 150, a 10-step warmup beats 45; 3e-3 is unstable.
- no dropout or layerdrop: +0.023 train accuracy, -0.009 dev at step 600.
- mask_prob 0.65 -> 0.2 (about 18 % of a 2 s crop in 2 spans of 10 frames, against 49 %):
  0.4 -> 0.3 adds 0.017 train / 0.033 dev, 0.3 -> 0.2 adds 0.038 / 0.014 (0.307 / 0.295 at
  step 600). Fewer masked frames per row also means fewer different distractors, so the
  plateau's accuracy rises from 0.047 to 0.063; the loss's chance, ln 101, is unchanged.
- 700 updates (600: 0.307 / 0.295, 700: 0.311 / 0.320); Gumbel decay 0.995 (the
  temperature reaches 0.5 at step 277; 0.99 does not shorten the plateau and is lower at
  step 400). The feature penalty (weight 10) causes the first, flat ~150 updates: it
  shrinks the encoder's output (mean square 0.04 -> 0.0004) before the loss moves. Weight
  0 removes that phase (accuracy 0.10 at step 40) but ends no higher (0.262 / 0.265
  against 0.269 / 0.281 at mask_prob 0.3), so it stays.

Seeds matter at this size: seed 1 of the 600-update run ends at 0.277 train / 0.322 dev
against seed 0's 0.307 / 0.295, so single-arm differences under about 0.03 are noise.

Result on 2 idle CPU cores, from a fresh clone: install 75 s, the run 6 min 45 s (corpus
preparation and compiles included); the last training line reads accuracy 0.311, the last
dev validation 0.320.

`shrunk_base()` is the earlier demo (Base shrunk to 3.8M parameters), which the conformer
and HuBERT demos mirror; `--config=configs/demo.py:tiny` is a 2-layer width-32 model on 1 s
crops for tests and smoke runs (a step takes milliseconds).
"""

import ml_collections

from configs import common

# Base's 7-layer waveform encoder (kernels 10, 3 x 4, 2 x 2; 320x downsampling) at 32
# channels instead of 512.
_CONV_32 = ((32, 10, 5),) + ((32, 3, 2),) * 4 + ((32, 2, 2),) * 2


def get_config(arg=None):
  if arg not in (None, "tiny"):
    raise ValueError(f"configs/demo.py takes no argument or 'tiny', got {arg!r}")
  if arg == "tiny":
    return _tiny()
  c = common.pretrain_config()
  c.total_steps = 700
  c.log_every = 20
  c.checkpoint_every = 200
  c.compute_dtype = "float32"  # bf16 matmuls are slow on CPUs
  c.data.batch_size = 32
  c.data.max_samples = 32_080  # 100 frames, 2 s
  c.data.min_samples = 8_000
  c.masking.mask_prob = 0.2
  c.model = common.wav2vec2_model(
    conv_layers=_CONV_32,
    embed_dim=64,
    num_layers=4,
    num_heads=4,
    mlp_dim=256,
    pos_conv_kernel=16,
    pos_conv_groups=4,
    final_dim=16,
    latent_vars=8,
    dropout=0.0,
    attention_dropout=0.0,
    dropout_input=0.0,
    dropout_features=0.0,
    layerdrop=0.0,
  )
  c.optim.learning_rate = 2e-3
  c.optim.warmup_steps = 2
  c.gumbel.decay = 0.995  # reaches the end temperature (0.5) at step 277
  c.valid.update(split="dev", every=200)
  c.diagnose.after_steps = 300  # the plateau ends near step 160 here
  c.lock()
  return c


def shrunk_base() -> ml_collections.ConfigDict:
  """Base shrunk to a laptop (128-channel conv extractor, 4 x 256 Transformer), objective,
  codebook (2 x 320), dropout and schedules as fairseq Base; batch 8 of 5 s crops, lr 1e-3,
  450 steps. The run configs/demo_conformer.py and configs/demo_hubert.py mirror. As a
  wav2vec 2.0 run it stays at chance (the table in the module docstring)."""
  c = common.pretrain_config()
  c.total_steps = 450
  c.log_every = 20
  c.checkpoint_every = 150
  c.compute_dtype = "float32"
  c.data.batch_size = 8
  c.data.max_samples = 80_080  # 250 frames, 5 s
  c.data.min_samples = 16_000
  c.model = common.wav2vec2_model(
    conv_layers=((128, 10, 5),) + ((128, 3, 2),) * 4 + ((128, 2, 2),) * 2,
    embed_dim=256,
    num_layers=4,
    num_heads=4,
    mlp_dim=1024,
    pos_conv_kernel=32,
    final_dim=128,
  )
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 45
  c.gumbel.decay = 0.995
  c.lock()
  return c


def _tiny():
  """A 2-layer width-32 model on 1 s crops, K = 10, 8 steps: tests and smoke runs."""
  c = shrunk_base()
  c.unlock()
  c.total_steps = 8
  c.log_every = 1
  c.checkpoint_every = 4
  c.optim.warmup_steps = 2
  c.data.max_samples = 16_080  # 50 frames, 1 s
  c.data.min_samples = 8_000
  c.objective.num_negatives = 10
  c.model = common.wav2vec2_model(
    conv_layers=_CONV_32,
    embed_dim=32,
    num_layers=2,
    num_heads=2,
    mlp_dim=64,
    pos_conv_kernel=16,
    pos_conv_groups=4,
    final_dim=16,
    latent_vars=8,
  )
  c.lock()
  return c
