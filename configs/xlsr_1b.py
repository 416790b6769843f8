"""XLS-R 1B pretraining (Babu et al. 2021): 48 layers of width 1280, FFN 5120, 16 heads.

Command (TPU pod or GPU cluster, one process per host), after building the mixture's
datasets (configs/xlsr.py says how; a NAME:SPLIT list after the file name replaces them):
  python -m sslax.main --config=configs/xlsr_1b.py --workdir=DIR \
    --config.data.data_dir=/data/tfds
  python -m sslax.main --config=configs/xlsr_1b.py:mls_german:train,mls_french:train ...

Model: 965,514,752 parameters, as Hugging Face's Wav2Vec2ForPreTraining built from
facebook/wav2vec2-xls-r-1b's config.json (the paper's '1B'); contrastive space and
codevectors of width 1024. Data: temperature sampling (alpha = 0.5) over the sources of
configs/xlsr.py; 240 crops of 20 s per update, 1M updates.
"""

from configs import xlsr


def get_config(arg=None):
  return xlsr.pretrain_config(arg, embed_dim=1280, num_layers=48, mlp_dim=5120, final_dim=1024)
