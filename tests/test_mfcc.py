"""Tests for sslax.features.mfcc against references written from Kaldi's documentation.

The reference below follows Kaldi's feature-window.cc / mel-computations.cc /
feature-mfcc.cc as documented (per-frame loops, an explicit DFT, filters built bin by bin
over the 256 bins below Nyquist, Kaldi's DCT matrix and lifter), in float64, with
torchaudio's defaults that fairseq's dump_mfcc_feature.py inherits (dither 0, float
waveform, log floor at float32 epsilon). Deltas are checked against librosa's
Savitzky-Golay deltas (width 5, edges repeated), which equal torchaudio's compute_deltas.

Tolerance: sslax returns float32; against the float64 reference, |difference| <=
1e-5 + 1e-6 |value| (float32 rounding of values up to about 100 is 4e-6).
"""

import math
import os

import librosa
import numpy as np
import pytest
import soundfile

from sslax.features import mfcc

RTOL, ATOL = 1e-6, 1e-5
DEMO_AUDIO = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  "sslax/data/demo_corpus/audio/train",
)


def kaldi_mel(hz):
  return 1127.0 * math.log(1.0 + hz / 700.0)


def reference_mfcc(samples):
  """f64[T, 13]: Kaldi's MFCC with torchaudio's defaults, one frame at a time."""
  samples = np.asarray(samples, np.float64)
  length, shift, padded, bins, ceps, lifter = 400, 160, 512, 23, 13, 22.0
  window = [(0.5 - 0.5 * math.cos(2 * math.pi * i / (length - 1))) ** 0.85 for i in range(length)]
  # MelBanks: bins centred on equal mel steps between 20 Hz and Nyquist, over the
  # padded/2 FFT bins below Nyquist.
  mel_low, mel_high = kaldi_mel(20.0), kaldi_mel(8000.0)
  delta = (mel_high - mel_low) / (bins + 1)
  banks = np.zeros((bins, padded // 2 + 1))
  for b in range(bins):
    left, centre, right = (mel_low + (b + j) * delta for j in range(3))
    for i in range(padded // 2):
      mel = kaldi_mel(i * 16000.0 / padded)
      if left < mel < right:
        if mel <= centre:
          banks[b, i] = (mel - left) / (centre - left)
        else:
          banks[b, i] = (right - mel) / (right - centre)
  # ComputeDctMatrix: row 0 sqrt(1/N), row k sqrt(2/N) cos(pi/N (n + 0.5) k).
  dct = np.zeros((ceps, bins))
  for k in range(ceps):
    for n in range(bins):
      scale = math.sqrt(1.0 / bins) if k == 0 else math.sqrt(2.0 / bins)
      dct[k, n] = scale * math.cos(math.pi / bins * (n + 0.5) * k)
  lift = np.array([1.0 + 0.5 * lifter * math.sin(math.pi * i / lifter) for i in range(ceps)])
  dft = np.exp(-2j * math.pi * np.outer(np.arange(padded // 2 + 1), np.arange(padded)) / padded)

  num_frames = 0 if len(samples) < length else 1 + (len(samples) - length) // shift
  out = np.zeros((num_frames, ceps))
  for t in range(num_frames):
    frame = list(samples[t * shift : t * shift + length])
    mean = sum(frame) / length
    frame = [v - mean for v in frame]
    for i in range(length - 1, 0, -1):  # ProcessWindow: pre-emphasis from the end
      frame[i] -= 0.97 * frame[i - 1]
    frame[0] -= 0.97 * frame[0]
    frame = [v * w for v, w in zip(frame, window, strict=True)] + [0.0] * (padded - length)
    power = np.abs(dft @ np.array(frame)) ** 2
    log_mel = np.log(np.maximum(banks @ power, np.finfo(np.float32).eps))
    out[t] = (dct @ log_mel) * lift
  return out


def signals():
  rng = np.random.default_rng(0)
  speech, rate = soundfile.read(os.path.join(DEMO_AUDIO, "00-0000.ogg"), dtype="float64")
  assert rate == 16_000
  t = np.arange(8_000) / 16_000
  chirp = 0.3 * np.sin(2 * math.pi * (100 + 3_000 * t) * t)
  # Digital silence in the middle: frames of zeros hit the log floor.
  gaps = np.concatenate([rng.normal(size=1_000) * 0.1, np.zeros(2_000), chirp[:1_500]])
  return {"speech": speech[:24_000], "chirp": chirp, "gaps": gaps}


@pytest.mark.parametrize("name", ["speech", "chirp", "gaps"])
def test_mfcc_matches_kaldi_reference(name):
  samples = signals()[name]
  ours = mfcc.mfcc(samples)
  theirs = reference_mfcc(samples)
  assert ours.shape == theirs.shape == (mfcc.num_frames(len(samples)), 13)
  assert ours.dtype == np.float32
  print(f"{name}: max |diff| {np.max(np.abs(ours - theirs)):.2e}")
  np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=ATOL)


def test_deltas_match_librosa():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(57, 13)).cumsum(0)
  d = mfcc.deltas(x)
  np.testing.assert_allclose(
    d, librosa.feature.delta(x, width=5, order=1, axis=0, mode="nearest"), rtol=0, atol=1e-12
  )
  # Inside, a ramp's delta is its slope; at the ends the repeated frames halve it or less.
  ramp = np.arange(10.0)[:, None]
  np.testing.assert_allclose(mfcc.deltas(ramp)[2:-2], 1.0)
  np.testing.assert_allclose(mfcc.deltas(ramp)[[0, 1]], [[0.5], [0.8]])


def test_features_stack_mfcc_delta_delta_delta():
  samples = signals()["speech"]
  f = mfcc.features(samples)
  c = reference_mfcc(samples)
  d = librosa.feature.delta(c, width=5, order=1, axis=0, mode="nearest")
  dd = librosa.feature.delta(d, width=5, order=1, axis=0, mode="nearest")
  assert f.shape == (148, 39) and f.dtype == np.float32  # 1 + (24000 - 400) // 160
  np.testing.assert_allclose(f, np.concatenate([c, d, dd], axis=1), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("num_samples, frames", [(0, 0), (399, 0), (400, 1), (559, 1), (560, 2)])
def test_frame_count_is_kaldi_snip_edges(num_samples, frames):
  assert mfcc.num_frames(num_samples) == frames
  assert mfcc.features(np.zeros(num_samples)).shape == (frames, 39)
  assert mfcc.FRAME_RATE_HZ == 100.0
