"""Small conformer models pretrained on the embedded demo corpus, on a laptop-class CPU.

Commands (one per frontend/encoder/objective pairing of issue 6):
  python -m sslax.main --config=configs/demo_conformer.py:w2v --workdir=/tmp/sslax-demo-w2v
  python -m sslax.main --config=configs/demo_conformer.py:logmel --workdir=/tmp/sslax-demo-lm
  python -m sslax.main --config=configs/demo_conformer.py:bestrq --workdir=/tmp/sslax-demo-rq

  w2v:    waveform frontend + conformer, wav2vec 2.0 objective (configs/w2v_conformer_large.py
          shrunk);
  logmel: log mel + conv2d subsampling (40 ms frames) + conformer, wav2vec 2.0 objective
          (configs/w2v_logmel_conformer.py shrunk);
  bestrq: log mel + conformer, BEST-RQ (configs/bestrq_conformer_0.6b.py shrunk: 4
          codebooks of 1024 instead of 16 of 8192).

Each is configs/demo.py's shrunk_base() run (4 x 256 encoder, batch 8 of 5 s crops, 450
steps, lr 1e-3) with the conformer in place of the Transformer (depthwise kernel 15). Steps
per second and the loss after 100 steps on this machine: benchmarks/RESULTS.md.

Append `,tiny` (e.g. `:bestrq,tiny`) for a 1-block width-32 model on 1 s crops, for tests
and smoke runs.
"""

from configs import common, demo

VARIANTS = ("w2v", "logmel", "bestrq")


def get_config(arg=None):
  variant, _, size = (arg or "").partition(",")
  if variant not in VARIANTS or size not in ("", "tiny"):
    raise ValueError(
      f"configs/demo_conformer.py takes one of {VARIANTS}, optionally ',tiny'; got {arg!r}"
    )
  tiny = size == "tiny"
  c = demo.get_config("tiny") if tiny else demo.shrunk_base()
  c.unlock()
  # demo.py's Transformer fields and conv stack, a conformer in place of its Transformer.
  shared = {k: v for k, v in c.model.items() if k in common.bestrq_model()}
  shared.update(
    encoder="conformer",
    conformer_conv_kernel=7 if tiny else 15,  # 15 frames: 300 ms at 20 ms, 600 ms at 40 ms
    layerdrop=0.0,  # the Conformer papers use none
  )
  if tiny:
    shared.update(num_layers=1)  # one block: a conformer step compiles 2x slower per layer
  if variant != "w2v":
    # Log mel at 40 ms frames; a narrow subsampling stack (paper scale: 256+ channels).
    shared.update(frontend="logmel", mel_conv_channels=4 if tiny else 32)
    # The feature penalty is meant for the waveform CNN's features (w2v Large: 0 too).
    c.objective.feature_penalty_weight = 0.0
  if variant == "bestrq":
    c.model = common.bestrq_model(
      **shared,
      num_codebooks=2 if tiny else 4,
      codebook_size=16 if tiny else 1024,
    )
    c.masking.mask_prob = 0.4  # BEST-RQ's p = 0.01 per 10 ms with 400 ms spans
    c.masking.mask_length = 10  # frames of 40 ms
    c.objective = common.bestrq_pretrain_config().objective
    del c.gumbel
  else:
    c.model.update(shared)
  c.lock()
  return c
