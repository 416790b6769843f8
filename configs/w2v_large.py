"""wav2vec 2.0 Large pretraining on Libri-Light 60k h (fairseq wav2vec2_large_librivox.yaml).

Command (TPU pod or GPU cluster, one process per host):
  python -m sslax.main --config=configs/w2v_large.py --workdir=DIR --config.data.name=...

Model: Baevski et al. 2020's Large LV-60k, 317,390,592 parameters (transformers'
`Wav2Vec2ForPreTraining` of this architecture counts the same): layer-norm conv extractor
with bias, 24 pre-LN layers of width 1024, final_dim 768, Gumbel temperature 2 -> 0.1,
no dropout. fairseq: 128 GPUs x 1.2M samples (2.7 h per update), crops <= 320k samples,
per-utterance normalisation, feature penalty off, lr 5e-3 in the yaml (the paper gives 3e-4
for 600k updates, not re-checked here; the yaml's 1M updates and 5e-3 are kept here since
they are what runs). Each value against its source: docs/references.md.
Static-shape equivalent: 480 crops of 320,080 samples (1000 frames).
"""

from configs import common


def get_config(arg=None):
  del arg
  c = common.pretrain_config()
  c.total_steps = 1_000_000
  c.data.batch_size = 480
  c.data.max_samples = 320_080
  c.data.normalize = True
  c.model = common.wav2vec2_model(
    extractor_mode="layer_norm",
    conv_bias=True,
    embed_dim=1024,
    num_layers=24,
    num_heads=16,
    mlp_dim=4096,
    layer_norm_first=True,
    dropout=0.0,
    attention_dropout=0.0,
    dropout_input=0.0,
    dropout_features=0.0,
    layerdrop=0.0,
    feature_grad_mult=1.0,
    final_dim=768,
  )
  c.objective.feature_penalty_weight = 0.0
  c.gumbel.end = 0.1
  c.optim.learning_rate = 5e-3
  c.lock()
  return c
