"""Kaldi-compatible MFCC + delta + delta-delta: HuBERT iteration 1's k-means features.

What fairseq's `examples/hubert/simple_kmeans/dump_mfcc_feature.py` computes:
`torchaudio.compliance.kaldi.mfcc(waveform, sample_frequency=16000, use_energy=False)` on
the float waveform (samples in [-1, 1]), then `torchaudio.functional.compute_deltas`
applied once for the deltas and again to the deltas for the delta-deltas. With
torchaudio's defaults that is, per frame of 25 ms (400 samples) every 10 ms (160 samples),
frames entirely inside the signal (Kaldi `snip_edges`), no dither:

  remove the frame's mean -> pre-emphasis x[i] - 0.97 x[i-1] (x[-1] := x[0]) -> Povey
  window (symmetric Hann ^ 0.85) -> zero-pad to 512 -> power spectrum -> 23 triangular mel
  filters (Kaldi's mel scale 1127 ln(1 + f/700), 20 Hz to 8 kHz, triangles in mel, the
  Nyquist bin unused) -> log, floored at float32 epsilon -> orthonormal DCT-II, first 13
  -> cepstral lifter 1 + 11 sin(pi i / 22).

Deltas: d[t] = sum_{k=1..2} k (x[t+k] - x[t-k]) / 10, the ends repeating the edge frame.

Implemented in numpy, in float64, returned as float32: the input lengths vary per
utterance (a jitted version would recompile per length or need padding logic), the work
is small (one 512-point FFT per 10 ms) and runs on the hosts that read the audio, and
float64 makes the values reproducible to the last float32 bit whatever the machine.
"""

import math

import numpy as np

SAMPLE_RATE_HZ = 16_000
FRAME_LENGTH = 400  # samples (25 ms)
FRAME_SHIFT = 160  # samples (10 ms): 100 frames per second
FFT_SIZE = 512  # the frame zero-padded to a power of two
PREEMPHASIS = 0.97
WINDOW_POWER = 0.85  # Povey window: Hann ** 0.85
NUM_MEL_BINS = 23
LOW_FREQ_HZ = 20.0
HIGH_FREQ_HZ = SAMPLE_RATE_HZ / 2
NUM_CEPS = 13
CEPSTRAL_LIFTER = 22.0
DELTA_WINDOW = 2  # frames either side: torchaudio compute_deltas win_length=5
LOG_FLOOR = float(np.finfo(np.float32).eps)  # torchaudio floors float32 mel energies here
FRAME_RATE_HZ = SAMPLE_RATE_HZ / FRAME_SHIFT
FEATURE_DIM = 3 * NUM_CEPS

# Everything above, for manifests.
PARAMS = dict(
  type="mfcc",
  sample_rate_hz=SAMPLE_RATE_HZ,
  frame_length=FRAME_LENGTH,
  frame_shift=FRAME_SHIFT,
  snip_edges=True,
  dither=0.0,
  remove_dc_offset=True,
  preemphasis=PREEMPHASIS,
  window="povey",
  fft_size=FFT_SIZE,
  num_mel_bins=NUM_MEL_BINS,
  low_freq_hz=LOW_FREQ_HZ,
  high_freq_hz=HIGH_FREQ_HZ,
  num_ceps=NUM_CEPS,
  cepstral_lifter=CEPSTRAL_LIFTER,
  use_energy=False,
  deltas="delta, delta-delta (window 5, edges repeated)",
  dim=FEATURE_DIM,
  frame_rate_hz=FRAME_RATE_HZ,
)


def num_frames(num_samples: int) -> int:
  """Frames of `num_samples` samples: 1 + (S - 400) // 160, or 0 below 400 samples."""
  return 0 if num_samples < FRAME_LENGTH else 1 + (num_samples - FRAME_LENGTH) // FRAME_SHIFT


def _mel(hz):
  return 1127.0 * np.log1p(np.asarray(hz, np.float64) / 700.0)


def _mel_banks() -> np.ndarray:
  """f64[FFT_SIZE // 2 + 1, NUM_MEL_BINS]: triangular filters over power-spectrum bins."""
  edges = np.linspace(_mel(LOW_FREQ_HZ), _mel(HIGH_FREQ_HZ), NUM_MEL_BINS + 2)
  left, center, right = edges[:-2], edges[1:-1], edges[2:]
  bin_mel = _mel(np.arange(FFT_SIZE // 2 + 1) * SAMPLE_RATE_HZ / FFT_SIZE)[:, None]
  rising = (bin_mel - left) / (center - left)
  falling = (right - bin_mel) / (right - center)
  banks = np.maximum(np.minimum(rising, falling), 0.0)
  banks[-1] = 0.0  # Kaldi's filters cover bins below Nyquist only
  return banks


def _dct_lifter() -> np.ndarray:
  """f64[NUM_MEL_BINS, NUM_CEPS]: orthonormal DCT-II columns times the cepstral lifter."""
  n = np.arange(NUM_MEL_BINS)[:, None] + 0.5
  i = np.arange(NUM_CEPS)[None]
  dct = np.cos(math.pi / NUM_MEL_BINS * n * i) * math.sqrt(2.0 / NUM_MEL_BINS)
  dct[:, 0] = math.sqrt(1.0 / NUM_MEL_BINS)
  return dct * (1.0 + 0.5 * CEPSTRAL_LIFTER * np.sin(math.pi * i / CEPSTRAL_LIFTER))


_WINDOW = (0.5 - 0.5 * np.cos(2 * math.pi * np.arange(FRAME_LENGTH) / (FRAME_LENGTH - 1))) ** (
  WINDOW_POWER
)
_MEL_BANKS = _mel_banks()
_DCT_LIFTER = _dct_lifter()


def mfcc(samples: np.ndarray) -> np.ndarray:
  """f32[T, 13] Kaldi MFCCs (module docstring) of f[S] samples in [-1, 1] at 16 kHz."""
  samples = np.asarray(samples, np.float64).reshape(-1)
  T = num_frames(samples.size)
  if T == 0:
    return np.zeros((0, NUM_CEPS), np.float32)
  frames_TxL = np.lib.stride_tricks.sliding_window_view(samples, FRAME_LENGTH)[::FRAME_SHIFT][:T]
  frames_TxL = frames_TxL - frames_TxL.mean(axis=1, keepdims=True)
  previous_TxL = np.concatenate([frames_TxL[:, :1], frames_TxL[:, :-1]], axis=1)
  frames_TxL = (frames_TxL - PREEMPHASIS * previous_TxL) * _WINDOW
  power_TxF = np.abs(np.fft.rfft(frames_TxL, n=FFT_SIZE)) ** 2
  log_mel_TxM = np.log(np.maximum(power_TxF @ _MEL_BANKS, LOG_FLOOR))
  return (log_mel_TxM @ _DCT_LIFTER).astype(np.float32)


def deltas(x_TxC: np.ndarray) -> np.ndarray:
  """Regression deltas over 2 frames either side, edges repeated (torchaudio's)."""
  x_TxC = np.asarray(x_TxC, np.float64)
  T = x_TxC.shape[0]
  padded = np.concatenate(
    [x_TxC[:1].repeat(DELTA_WINDOW, 0), x_TxC, x_TxC[-1:].repeat(DELTA_WINDOW, 0)]
  )
  total = sum(
    k
    * (
      padded[DELTA_WINDOW + k : DELTA_WINDOW + k + T]
      - padded[DELTA_WINDOW - k : DELTA_WINDOW - k + T]
    )
    for k in range(1, DELTA_WINDOW + 1)
  )
  return total / (2 * sum(k * k for k in range(1, DELTA_WINDOW + 1)))


def features(samples: np.ndarray) -> np.ndarray:
  """f32[T, 39]: 13 MFCCs, their deltas and delta-deltas (HuBERT iteration 1), 100 Hz."""
  c_TxC = mfcc(samples)
  if c_TxC.shape[0] == 0:
    return np.zeros((0, FEATURE_DIM), np.float32)
  d_TxC = deltas(c_TxC)
  return np.concatenate([c_TxC, d_TxC, deltas(d_TxC)], axis=1).astype(np.float32)
