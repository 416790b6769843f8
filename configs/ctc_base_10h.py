"""wav2vec 2.0 Base fine-tuned with CTC on 10 h of LibriSpeech (fairseq base_10h.yaml).

Command (after pretraining configs/w2v_base.py into PRETRAINED, or with hf:HF_DIR):
  python -m sslax.main --config=configs/ctc_base_10h.py --workdir=DIR \
    --config.init_from=PRETRAINED --config.data.data_dir=/data/tensorflow_datasets
  python -m sslax.main --config=configs/ctc_base_10h.py --workdir=DIR \
    --config.job=evaluate --config.eval.split=test_other

fairseq base_10h.yaml: 20k updates, Adam(0.9, 0.98, eps 1e-8), lr 5e-5, tri-stage
(0.1, 0.4, 0.5; final scale 0.05), Transformer frozen for 10k updates, mask_prob 0.65,
channel masks 0.5 x 64, layerdrop 0.05, activation dropout 0.1, feature encoder frozen,
2 GPUs x 3.2M samples x update_freq 4 (about 128 utterances per update). Libri-light's
10 h set is not a TFDS split: a seeded 600-minute subset of train_clean100 stands in.
Expected (paper, Base, 10 h labels, no LM): about 11 / 17.6 WER test-clean / test-other
(the paper's appendix results without LM, not re-checked: docs/references.md).
"""

from configs import common


def get_config(arg=None):
  del arg
  c = common.finetune_config()
  c.data.labelled_minutes = 600.0
  c.lock()
  return c
