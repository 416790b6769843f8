"""wav2vec 2.0 Large (LV-60k) fine-tuned with CTC on 10 minutes of LibriSpeech
(fairseq vox_10m.yaml).

Command (after pretraining configs/w2v_large.py into PRETRAINED, or with hf:HF_DIR, e.g.
facebook/wav2vec2-large-lv60 imported by sslax.interop):
  python -m sslax.main --config=configs/ctc_large_10m.py --workdir=DIR \
    --config.init_from=PRETRAINED --config.data.data_dir=/data/tensorflow_datasets
  python -m sslax.main --config=configs/ctc_large_10m.py --workdir=DIR \
    --config.job=evaluate --config.eval.split=test_other

fairseq vox_10m.yaml: 13k updates, Adam(0.9, 0.98, eps 1e-8), lr 1e-4, tri-stage
(0.1, 0.4, 0.5; final scale 0.05), Transformer frozen for 10k updates, mask_prob 0.65,
channel masks 0.25 x 64, layerdrop 0.1, activation dropout 0.1, feature encoder frozen,
per-utterance normalisation (as the Large pretraining), 4 GPUs x 1.28M samples x
update_freq 5: more than the whole set, so here 32 of its ~48 utterances per update.
Libri-light's 10-minute set is not a TFDS split: a seeded 10-minute subset of
train_clean100 stands in. Expected (paper, Large LV-60k, 10 min, no LM): about 43 / 46
WER test-clean / test-other (the appendix results without LM, not re-checked: which row
is LV-60k's is an open item in docs/references.md); 4.8 / 8.2 with a Transformer LM (the
paper's abstract).

`:hubert` (`--config=configs/ctc_large_10m.py:hubert`) fine-tunes HuBERT Large instead
(configs/hubert_large.py, or hf:HF_DIR of transformers' `HubertModel`): the same recipe on
its architecture, whose feature encoder has no conv bias (`config.init_from` refuses a
source of another architecture, naming the field).
"""

from configs import common, hubert_large, w2v_large

# The pretrained model each argument starts from: its architecture is the CTC model's.
_PRETRAINED = {None: w2v_large, "hubert": hubert_large}


def get_config(arg=None):
  if arg not in _PRETRAINED:
    raise ValueError(f"configs/ctc_large_10m.py takes no argument or 'hubert', got {arg!r}")
  c = common.finetune_config()
  c.total_steps = 13_000
  c.data.labelled_minutes = 10.0
  c.data.batch_size = 32
  c.data.normalize = True
  c.masking.mask_channel_prob = 0.25
  c.model = common.ctc_model(_PRETRAINED[arg].get_config().model)
  c.optim.learning_rate = 1e-4
  c.lock()
  return c
