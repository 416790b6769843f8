"""wav2vec 2.0 on log mel features with a conformer (fairseq wav2vec2_large_fbank_librispeech.yaml).

Command (TPU pod or GPU cluster, one process per host):
  python -m sslax.main --config=configs/w2v_logmel_conformer.py --workdir=DIR \
    --config.data.name=librispeech \
    --config.data.split=train_clean100+train_clean360+train_other500

Sources: fairseq examples/wav2vec/config/pretraining/wav2vec2_large_fbank_librispeech.yaml
(on fairseq's `ust` branch, commit 7e2a8ea; it is not on `main`):
80 filterbank features, 20 ms frames (`fbank_stride: 2`), the Large conformer with rotary
positions (`pos_enc_type: rope`), diversity weight 0.2, feature penalty 0, lr 5e-3, crops
of 250k samples, per-utterance normalisation, mask 0.65 x 10. Differences, stated: fairseq
stacks two 10 ms filterbank frames; here one stride-2 3x3 conv2d (32 channels, so 40 x 32 =
1280 features, our choice) subsamples the log mel (spectrogram.LogMelFrontend) to the same
20 ms frames. fairseq runs 32 GPUs x 5000 frames for 4M updates; the batch here is
wav2vec 2.0 Large's (480 crops) and 1M updates.
"""

from configs import w2v_conformer_large


def get_config(arg=None):
  del arg
  c = w2v_conformer_large.get_config()
  c.unlock()
  c.data.max_samples = 250_000
  c.model.frontend = "logmel"
  c.model.mel_bins = 80
  c.model.mel_subsampling = 2  # fbank_stride 2: 20 ms frames
  c.model.mel_conv_channels = 32
  c.model.conformer_position_embeddings = "rotary"  # pos_enc_type: rope
  c.objective.diversity_weight = 0.2  # loss_weights [0.2, 0]
  c.lock()
  return c
