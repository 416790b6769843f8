"""A small wav2vec 2.0 pretrained on the embedded demo corpus, on a laptop-class CPU.

Command:
  python -m sslax.main --config=configs/demo.py --workdir=/tmp/sslax-demo

Model: the Base architecture shrunk (128-channel conv extractor, 4 x 256 Transformer),
objective and schedules as fairseq Base. Runs in under 10 minutes on 2 CPU cores; the
result on this machine is recorded in benchmarks/RESULTS.md.
"""

from configs import common


def get_config(arg=None):
  del arg
  c = common.pretrain_config()
  c.total_steps = 600
  c.log_every = 20
  c.checkpoint_every = 200
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
  c.optim.warmup_steps = 60
  c.gumbel.decay = 0.995  # reaches the end temperature within the short run
  c.lock()
  return c
