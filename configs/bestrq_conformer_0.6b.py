"""BEST-RQ with the 0.6B conformer (Chiu et al. 2022; the w2v-BERT XL encoder).

Command (TPU pod or GPU cluster, one process per host; the file name has a dot, so pass
it as a path, as here):
  python -m sslax.main --config=configs/bestrq_conformer_0.6b.py --workdir=DIR \
    --config.data.name=...

Sources: BEST-RQ (Chiu et al. 2022, arXiv:2202.01855): 80-bin log mel at 10 ms, conv2d
subsampling 4x to 40 ms, 24 conformer layers of width 1024 with 8 heads (w2v-BERT XL,
Chung et al. 2021), relative positions; targets from a frozen random projection of 4
stacked normalised log-mel frames to 16 codebooks of 8192 L2-normalised codewords of
dimension 16; masks start at each 10 ms frame with p = 0.01 and cover 400 ms (here: 10
frames of 40 ms, mask_prob 0.4 in fairseq's convention). Our choices, not the paper's: FFN
4096 (4 x width), depthwise kernel 5, 256 subsampling channels, dropout 0.1 and no
layerdrop, wav2vec 2.0 Base's optimizer (Adam, lr 5e-4, 32k warmup, linear decay), wav2vec
2.0 Large's batch (480 crops of 20 s) and 1M updates (BEST-RQ trains with batch 2048 and a
Transformer schedule we do not reproduce). The papers' values above are not re-checked
against their full texts (docs/references.md lists each and what would confirm it).
`python -m sslax.describe --config=configs/bestrq_conformer_0.6b.py` prints parameters
(the 16 x 8192 softmax head alone is 134M) and FLOPs.
"""

from configs import common


def get_config(arg=None):
  del arg
  c = common.bestrq_pretrain_config()
  c.total_steps = 1_000_000
  c.data.batch_size = 480
  c.data.max_samples = 320_000  # 20 s: 2001 log-mel frames, 501 encoder frames
  c.data.normalize = True
  c.model = common.bestrq_model(
    embed_dim=1024,
    num_layers=24,
    num_heads=8,
    mlp_dim=4096,
    layerdrop=0.0,
    feature_grad_mult=1.0,
    conformer_conv_kernel=5,
  )
  c.lock()
  return c
