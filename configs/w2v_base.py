"""wav2vec 2.0 Base pretraining on LibriSpeech 960 h (fairseq wav2vec2_base_librispeech.yaml).

Command (TPU pod or GPU cluster, one process per host):
  python -m sslax.main --config=configs/w2v_base.py --workdir=DIR \
    --config.data.name=librispeech \
    --config.data.split=train_clean100+train_clean360+train_other500

Model: 95,044,608 parameters (Baevski et al. 2020, Base). fairseq trains 400k updates on
64 V100s with 1.4M samples each (about 1.6 h of audio per update) and crops of at most
250k samples; with static shapes that is 384 crops of 250,000 samples (1.67 h) per update.
Expected: contrastive accuracy above 0.6 and loss near 2 late in training.
"""

from configs import common


def get_config(arg=None):
  del arg
  c = common.pretrain_config()
  c.lock()
  return c
