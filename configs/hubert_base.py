"""HuBERT Base pretraining on LibriSpeech 960 h (fairseq hubert_base_librispeech.yaml).

`get_config('iter1')` or `get_config('iter2')` (default): fairseq examples/hubert
config/pretrain/data/iter1.yaml and iter2.yaml and the paper (Hsu et al. 2021): iteration
1 predicts K=100 k-means units of MFCC (100 Hz) for 250k updates; iteration 2 predicts
K=500 units of layer-6 features of the iteration-1 model (50 Hz) for 400k updates.

Command (TPU pod or GPU cluster, one process per host):
  python -m sslax.main --config=configs/hubert_base.py:iter2 --workdir=DIR \
    --config.data.name=librispeech \
    --config.data.split=train_clean100+train_clean360+train_other500 \
    --config.units.dir=KMEANS_WORKDIR/units

Model: 94,371,712 parameters in the backbone (Hugging Face `HubertModel`, e.g.
facebook/hubert-base-ls960) plus 324,864 in the head at K=500 (94,696,576). fairseq:
32 GPUs x 1.4M samples per update, crops <= 250k samples, lr 5e-4 with 32k warmup steps,
clip 10, feature penalty 10. Expected: after iteration 2, 10 h CTC fine-tuning with a
4-gram LM gives 4.3 / 9.4 WER on test-clean / test-other (the paper's Base). The paper's
numbers here (250k updates, K=500 of layer 6, the WERs) are not re-checked against its
tables; each value against its source: docs/references.md.
"""

from configs import common

# iteration: (clusters, label rate in Hz, updates)
_ITERATIONS = {"iter1": (100, 100, 250_000), "iter2": (500, 50, 400_000)}


def get_config(arg=None):
  num_classes, label_rate, total_steps = _ITERATIONS[arg or "iter2"]
  c = common.hubert_pretrain_config()
  c.total_steps = total_steps
  c.model.num_classes = (num_classes,)
  c.units.label_rate = label_rate
  c.lock()
  return c
