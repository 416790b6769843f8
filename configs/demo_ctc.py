"""CTC fine-tuning of the demo wav2vec 2.0 on a few labelled minutes of the demo corpus.

Commands (the first from a pretraining workdir of configs/demo.py, the second scores the
result on the test split, whose voices training never hears):
  python -m sslax.main --config=configs/demo_ctc.py --workdir=/tmp/sslax-demo-ctc \
    --config.init_from=/tmp/sslax-demo
  python -m sslax.main --config=configs/demo_ctc.py --workdir=/tmp/sslax-demo-ctc \
    --config.job=evaluate

Fine-tuning validates on the dev split every 100 updates (its WER and CER in the `valid`
log lines, TensorBoard's valid/ and metrics.jsonl) and keeps the best state by dev CER in
/tmp/sslax-demo-ctc/checkpoints_best (`valid.best_metric='cer'`: on 10 labelled minutes WER
stays at or above 1 for most of the run; by WER, a run that fell to emitting only blanks at
update 300, WER 1.0 and CER 0.97, was kept over its update 100, WER 1.007 and CER 0.77).
The evaluate job scores the run as its own
config.json describes it (data, subset, model: overrides of those that contradict the run
are errors), by default its best checkpoint (`--config.eval.checkpoint=latest` the last),
on the test split (`--config.eval.split=dev` another), and ends by logging WER, CER, the
utterances scored and the file written, /tmp/sslax-demo-ctc/eval_test.json.

Model: configs/demo.py's architecture (so its workdir initialises everything but lm_head)
with fairseq's fine-tuning regularisation (base_10m.yaml: layerdrop 0.1, time masks 0.65,
channel masks 0.25, Transformer frozen for the first part of training, tri-stage Adam),
shrunk in steps (600; 250 left both arms emitting only blanks) and scaled up in learning
rate (a 10-minute subset of the train split's utterances up to 7 s). Without `init_from`
it trains from scratch, the baseline of the low-resource comparison (set
`--config.optim.freeze_finetune_updates=0 --config.model.feature_grad_mult=1.0` there:
a random Transformer gains nothing from being frozen, and a random feature encoder must
train). A run took about 45 minutes on 2 CPU cores shared with other jobs (load
5-10); results in benchmarks/RESULTS.md.

`--config=configs/demo_ctc.py:tiny` uses configs/demo.py:tiny's architecture on short
utterances, for tests: a step takes milliseconds.
"""

from configs import common, demo


def get_config(arg=None):
  if arg not in (None, "tiny"):
    raise ValueError(f"configs/demo_ctc.py takes no argument or 'tiny', got {arg!r}")
  c = common.finetune_config()
  c.total_steps = 600
  c.log_every = 50
  c.checkpoint_every = 200
  c.compute_dtype = "float32"  # bf16 matmuls are slow on CPUs
  c.data.name = "sslax_demo_corpus"
  c.data.split = "train"
  c.data.batch_size = 8
  # 350 frames (7 s): keeps 427 of the 498 train utterances (31 of 40.5 minutes) and
  # pads 8 x 7 s per step instead of 8 x 9.8 s.
  c.data.max_samples = 112_080
  c.data.max_label_length = 160  # the longest demo transcript has 153 characters
  c.data.labelled_minutes = 10.0
  c.masking.mask_channel_prob = 0.25
  c.masking.mask_channel_length = 21  # fairseq's 64 of 768 channels, scaled to 256
  c.model = common.ctc_model(demo.get_config(arg).model)
  c.optim.learning_rate = 5e-4
  c.optim.freeze_finetune_updates = 60
  c.valid.update(split="dev", every=100, best_metric="cer")
  c.eval.split = "test"
  c.eval.batch_size = 8
  if arg == "tiny":
    c.valid.every = 0  # tests that validate turn it on
    c.total_steps = 8
    c.log_every = 1
    c.checkpoint_every = 4
    c.data.batch_size = 4
    c.data.max_samples = 64_080  # 200 frames, 4 s
    c.data.max_label_length = 80
    c.data.labelled_minutes = 1.0
    c.masking.mask_channel_length = 4
    c.optim.freeze_finetune_updates = 4
  c.lock()
  return c
