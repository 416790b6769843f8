"""HuBERT Large pretraining on Libri-Light 60k h (fairseq hubert_large_librivox.yaml).

Targets: K=500 k-means units of layer-9 features of the iteration-2 Base model (50 Hz),
as the paper (Hsu et al. 2021) trains Large.

Command (TPU pod or GPU cluster, one process per host):
  python -m sslax.main --config=configs/hubert_large.py --workdir=DIR \
    --config.data.name=... --config.units.dir=KMEANS_WORKDIR/units

Model: 315,435,136 parameters in the backbone (Hugging Face `HubertModel` of this config)
plus 1,171,200 in the head (316,606,336): layer-norm conv extractor (no conv bias: the
yaml leaves HubertConfig's default), 24 pre-LN layers of width 1024, final_dim 768, no
dropout, full gradient into the extractor. fairseq: 128 GPUs x 0.9M samples (115M
samples, 2 h per update), crops <= 250k samples, per-utterance normalisation, 400k
updates, lr 1.5e-3, clip 1.0, feature penalty 10. Static-shape equivalent: 448 crops of
250,000 samples (112M).
"""

from configs import common


def get_config(arg=None):
  del arg
  c = common.hubert_pretrain_config()
  c.data.batch_size = 448
  c.data.normalize = True
  c.model = common.hubert_model(
    extractor_mode="layer_norm",
    embed_dim=1024,
    num_layers=24,
    num_heads=16,
    mlp_dim=4096,
    layer_norm_first=True,
    dropout=0.0,
    attention_dropout=0.0,
    dropout_input=0.0,
    layerdrop=0.0,
    feature_grad_mult=1.0,
    final_dim=768,
  )
  c.optim.learning_rate = 1.5e-3
  c.optim.clip_norm = 1.0
  c.lock()
  return c
