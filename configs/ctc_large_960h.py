"""wav2vec 2.0 Large (LV-60k) fine-tuned with CTC on all 960 h of LibriSpeech
(fairseq vox_960h.yaml).

Command (after pretraining configs/w2v_large.py into PRETRAINED, or with hf:HF_DIR):
  python -m sslax.main --config=configs/ctc_large_960h.py --workdir=DIR \
    --config.init_from=PRETRAINED --config.data.data_dir=/data/tensorflow_datasets
  python -m sslax.main --config=configs/ctc_large_960h.py --workdir=DIR \
    --config.job=evaluate --config.eval.split=test_other

fairseq vox_960h.yaml: 320k updates, Adam(0.9, 0.98, eps 1e-8), lr 3e-5, tri-stage
(0.1, 0.4, 0.5; final scale 0.05), Transformer frozen for 10k updates, mask_prob 0.5,
channel masks 0.25 x 64, layerdrop 0.1, activation dropout 0.1, feature encoder frozen,
per-utterance normalisation, 24 GPUs x 1.28M samples (about 160 utterances per update).
Expected (paper, Large LV-60k, 960 h, no LM): about 2.2 / 4.5 WER test-clean /
test-other (the appendix results without LM, not re-checked: docs/references.md);
1.8 / 3.3 with a Transformer LM (the paper's abstract).

`:hubert` (`--config=configs/ctc_large_960h.py:hubert`) fine-tunes HuBERT Large instead
(configs/hubert_large.py, or hf:HF_DIR of transformers' `HubertModel`): the same recipe on
its architecture, whose feature encoder has no conv bias (`config.init_from` refuses a
source of another architecture, naming the field).
"""

from configs import common, hubert_large, w2v_large

# The pretrained model each argument starts from: its architecture is the CTC model's.
_PRETRAINED = {None: w2v_large, "hubert": hubert_large}


def get_config(arg=None):
  if arg not in _PRETRAINED:
    raise ValueError(f"configs/ctc_large_960h.py takes no argument or 'hubert', got {arg!r}")
  c = common.finetune_config()
  c.total_steps = 320_000
  c.checkpoint_every = 10_000
  c.data.split = "train_clean100+train_clean360+train_other500"
  c.data.batch_size = 160
  c.data.normalize = True
  c.masking.mask_prob = 0.5
  c.masking.mask_channel_prob = 0.25
  c.model = common.ctc_model(_PRETRAINED[arg].get_config().model)
  c.optim.learning_rate = 3e-5
  c.lock()
  return c
