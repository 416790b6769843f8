"""A small wav2vec 2.0 pretrained on the embedded demo corpus, on a laptop-class CPU.

Command:
  python -m sslax.main --config=configs/demo.py --workdir=/tmp/sslax-demo

Model: the Base architecture shrunk (128-channel conv extractor, 4 x 256 Transformer),
objective and schedules as fairseq Base. Runs in under 10 minutes on 2 CPU cores; the
result on this machine is recorded in benchmarks/RESULTS.md.

`--config=configs/demo.py:tiny` shrinks everything further (a 2-layer width-32 model on
1 s crops) for tests and smoke runs: a step takes milliseconds.
"""

from configs import common


def get_config(arg=None):
  if arg not in (None, "tiny"):
    raise ValueError(f"configs/demo.py takes no argument or 'tiny', got {arg!r}")
  c = common.pretrain_config()
  c.total_steps = 450
  c.log_every = 20
  c.checkpoint_every = 150
  c.compute_dtype = "float32"  # bf16 matmuls are slow on CPUs
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
  c.gumbel.decay = 0.995  # reaches the end temperature within the short run
  if arg == "tiny":
    c.total_steps = 8
    c.log_every = 1
    c.checkpoint_every = 4
    c.optim.warmup_steps = 2
    c.data.max_samples = 16_080  # 50 frames, 1 s
    c.data.min_samples = 8_000
    c.objective.num_negatives = 10
    c.model = common.wav2vec2_model(
      conv_layers=((32, 10, 5),) + ((32, 3, 2),) * 4 + ((32, 2, 2),) * 2,
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
