"""wav2vec 2.0 Base fine-tuned with CTC on 10 minutes of LibriSpeech (fairseq base_10m.yaml).

Command (after pretraining configs/w2v_base.py into PRETRAINED, or with hf:HF_DIR):
  python -m sslax.main --config=configs/ctc_base_10m.py --workdir=DIR \
    --config.init_from=PRETRAINED --config.data.data_dir=/data/tensorflow_datasets
  python -m sslax.main --config=configs/ctc_base_10m.py --workdir=DIR \
    --config.job=evaluate --config.eval.split=test_other

fairseq base_10m.yaml: 13k updates, Adam(0.9, 0.98, eps 1e-8), lr 5e-5, tri-stage
(0.1, 0.4, 0.5; final scale 0.05), Transformer frozen for 10k updates, mask_prob 0.65,
channel masks 0.25 x 64, layerdrop 0.1, activation dropout 0.1, feature encoder frozen.
Its 2 GPUs x 3.2M samples x update_freq 4 exceed the whole 10-minute set, so an update
is about all of it; here 32 of its ~48 utterances. Libri-light's 10-minute set is not a
TFDS split: a seeded 10-minute subset of train_clean100 stands in (`data.subset_seed`).
Expected (paper, Base, 10 min labels, no LM): about 46 / 50 WER test-clean / test-other
(the paper's appendix results without LM, not re-checked: docs/references.md).
"""

from configs import common


def get_config(arg=None):
  del arg
  c = common.finetune_config()
  c.total_steps = 13_000
  c.data.labelled_minutes = 10.0
  c.data.batch_size = 32
  c.masking.mask_channel_prob = 0.25
  c.model.layerdrop = 0.1
  c.lock()
  return c
