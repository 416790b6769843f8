"""XLS-R 0.3B pretraining (Babu et al. 2021): 24 layers of width 1024, FFN 4096, 16 heads.

Command (TPU pod or GPU cluster, one process per host), after building the mixture's
datasets (configs/xlsr.py says how; a NAME:SPLIT list after the file name replaces them):
  python -m sslax.main --config=configs/xlsr_0.3b.py --workdir=DIR \
    --config.data.data_dir=/data/tfds
  python -m sslax.main --config=configs/xlsr_0.3b.py:mls_german:train,mls_french:train ...

Model: 317,390,592 parameters, as Hugging Face's Wav2Vec2ForPreTraining built from
facebook/wav2vec2-xls-r-300m's config.json: wav2vec 2.0 Large's architecture
(configs/w2v_large.py), contrastive space and codevectors of width 768. Data: temperature
sampling (alpha = 0.5) over the sources of configs/xlsr.py; 240 crops of 20 s per update,
1M updates.
"""

from configs import xlsr


def get_config(arg=None):
  return xlsr.pretrain_config(arg, embed_dim=1024, num_layers=24, mlp_dim=4096, final_dim=768)
