"""wav2vec 2.0 Base fine-tuned with CTC on LibriSpeech train-clean-100 (fairseq base_100h.yaml).

Command (after pretraining configs/w2v_base.py into PRETRAINED, or with hf:HF_DIR):
  python -m sslax.main --config=configs/ctc_base_100h.py --workdir=DIR \
    --config.init_from=PRETRAINED --config.data.data_dir=/data/tensorflow_datasets
  python -m sslax.main --config=configs/ctc_base_100h.py --workdir=DIR \
    --config.job=evaluate --config.eval.split=test_other

fairseq base_100h.yaml: 80k updates, Adam(0.9, 0.98, eps 1e-8), lr 3e-5, tri-stage
(0.1, 0.4, 0.5; final scale 0.05), no Transformer freeze, mask_prob 0.65, channel masks
0.5 x 64, layerdrop 0.1, activation dropout 0.1, feature encoder frozen, 2 GPUs x 3.2M
samples x update_freq 4 (about 128 utterances per update), all of train_clean100.
Expected (paper, Base, 100 h labels, no LM): about 6.1 / 13.3 WER test-clean / test-other
(the paper's appendix results without LM, not re-checked: docs/references.md).
"""

from configs import common


def get_config(arg=None):
  del arg
  c = common.finetune_config()
  c.total_steps = 80_000
  c.checkpoint_every = 5_000
  c.model.layerdrop = 0.1
  c.optim.learning_rate = 3e-5
  c.optim.freeze_finetune_updates = 0
  c.lock()
  return c
