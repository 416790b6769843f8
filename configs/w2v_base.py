"""wav2vec 2.0 Base pretraining on LibriSpeech 960 h (fairseq wav2vec2_base_librispeech.yaml).

Command (TPU pod or GPU cluster, one process per host):
  python -m sslax.main --config=configs/w2v_base.py --workdir=DIR \
    --config.data.name=librispeech \
    --config.data.split=train_clean100+train_clean360+train_other500

Model: Baevski et al. 2020's Base, 95,044,608 parameters (the count of transformers'
`Wav2Vec2ForPreTraining` of this architecture). fairseq trains 400k updates on 64 GPUs
(V100s in the paper) with 1.4M samples each (about 1.6 h of audio per update) and crops
of at most 250k samples; with static shapes that is 384 crops of 250,000 samples (1.67 h)
per update.
Each value against its source: docs/references.md.
"""

from configs import common


def get_config(arg=None):
  del arg
  c = common.pretrain_config()
  c.lock()
  return c
