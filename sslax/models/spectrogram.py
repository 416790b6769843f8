"""Log-mel front end: log mel spectrogram in JAX, then conv2d subsampling.

16 kHz samples -> 25 ms Hann windows every 10 ms (400 / 160 samples), power spectrum of a
512-point FFT -> 80 mel bins (librosa's default Slaney scale and area normalisation, or
HTK) -> log(max(mel, floor)) -> per-utterance or global normalisation -> 3x3 stride-2
convolutions + ReLU over time and frequency, one per factor of 2 (4x: 40 ms frames).

Framing follows librosa: centred (`center=True`) frames are those of the audio padded
with frame_length / 2 zeros on each side (librosa's `pad_mode='constant'`), so frame t
is centred on sample 160 t; otherwise frame t starts at sample 160 t and only whole
windows count. `num_frames` is the one place that says how many frames a number of
samples gives; the input pipeline and the model both use it.

Padding: padded samples are zeroed, which is what an utterance alone sees past its end
(zero centring pad, zero convolution padding), padded frames are zeroed before each
convolution and normalisation statistics skip them, so padded samples change nothing in
unpadded frames.
"""

from collections.abc import Sequence
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Floor on the per-utterance variance before its inverse square root.
NORM_EPSILON = 1e-5


def num_mel_frames(num_samples, frame_length: int = 400, frame_step: int = 160, center=True):
  """Log-mel frames from `num_samples` samples (python int or numpy / jax int array).

  Centred: 1 + n // frame_step (librosa), and 0 for n = 0. Otherwise the whole windows:
  (n - frame_length) // frame_step + 1, or 0 when n < frame_length.
  """
  n = num_samples
  if center:
    # Multiplying by the comparison clips at 0 for ints and arrays alike.
    return (n > 0) * (n // frame_step + 1)
  return (n >= frame_length) * ((n - frame_length) // frame_step + 1)


def num_frames(
  num_samples,
  frame_length: int = 400,
  frame_step: int = 160,
  center: bool = True,
  subsampling: int = 4,
):
  """Frames out of `LogMelFrontend`: ceil(mel frames / subsampling).

  Each stride-2 convolution (kernel 3, one frame of zero padding each side) maps n frames
  to ceil(n / 2). Same kind as `num_samples` (python int, numpy or jax int array).
  """
  n = num_mel_frames(num_samples, frame_length, frame_step, center)
  for _ in range(_num_convs(subsampling)):
    n = (n + 1) // 2
  return n


def _num_convs(subsampling: int) -> int:
  convs = int(math.log2(subsampling)) if subsampling >= 1 else -1
  if convs < 0 or 2**convs != subsampling:
    raise ValueError(f"subsampling must be a power of 2 (1, 2, 4, 8), got {subsampling}")
  return convs


def _hz_to_mel(hz: np.ndarray, scale: str) -> np.ndarray:
  if scale == "htk":
    return 2595.0 * np.log10(1.0 + hz / 700.0)
  # Slaney: linear below 1 kHz (200/3 Hz per mel), logarithmic above (6.4x per 27 mels).
  log_step = math.log(6.4) / 27.0
  return np.where(
    hz < 1000.0, 3.0 * hz / 200.0, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / log_step
  )


def _mel_to_hz(mel: np.ndarray, scale: str) -> np.ndarray:
  if scale == "htk":
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
  log_step = math.log(6.4) / 27.0
  return np.where(mel < 15.0, 200.0 * mel / 3.0, 1000.0 * np.exp(log_step * (mel - 15.0)))


def mel_filterbank(
  num_mel_bins: int,
  sample_rate: int,
  fft_size: int,
  lower_edge_hz: float,
  upper_edge_hz: float,
  scale: str = "slaney",
) -> np.ndarray:
  """f64[fft_size // 2 + 1, num_mel_bins] triangular filters with Slaney area normalisation.

  Filter m rises from mel point m to m + 1 and falls to m + 2 (num_mel_bins + 2 points
  evenly spaced in mel between the edges), scaled by 2 / (width in Hz) so each has unit
  area, as librosa.filters.mel(norm='slaney'); `scale` is 'slaney' or 'htk'.
  """
  if scale not in ("slaney", "htk"):
    raise ValueError(f"mel scale must be 'slaney' or 'htk', got {scale!r}")
  fft_hz_F = np.linspace(0.0, sample_rate / 2.0, fft_size // 2 + 1)
  edges_mel = _hz_to_mel(np.array([lower_edge_hz, upper_edge_hz], np.float64), scale)
  points_hz_P = _mel_to_hz(np.linspace(edges_mel[0], edges_mel[1], num_mel_bins + 2), scale)
  widths_hz = np.diff(points_hz_P)
  rising_FxM = (fft_hz_F[:, None] - points_hz_P[None, :-2]) / widths_hz[None, :-1]
  falling_FxM = (points_hz_P[None, 2:] - fft_hz_F[:, None]) / widths_hz[None, 1:]
  weights_FxM = np.maximum(0.0, np.minimum(rising_FxM, falling_FxM))
  return weights_FxM * (2.0 / (points_hz_P[2:] - points_hz_P[:-2]))[None, :]


def _frame_paddings(num_valid_B: jax.Array, num_frames_total: int) -> jax.Array:
  return (jnp.arange(num_frames_total)[None, :] >= num_valid_B[:, None]).astype(jnp.float32)


class LogMelFrontend(nn.Module):
  """Log mel spectrogram + conv2d subsampling, padding-aware (WaveformFrontend's contract).

  Attributes:
    num_mel_bins: mel bins (80).
    sample_rate: Hz (16000).
    frame_length: window length in samples (400 = 25 ms).
    frame_step: hop in samples (160 = 10 ms).
    fft_size: FFT points (512); the window is zero-padded to it.
    center: centred frames (librosa, True) or whole windows from sample 0 (False).
    mel_scale: 'slaney' (librosa default) or 'htk'.
    lower_edge_hz: lowest mel filter edge.
    upper_edge_hz: highest mel filter edge (at most sample_rate / 2).
    log_floor: mel power floor before the log.
    normalization: 'utterance' (each bin to zero mean, unit variance over the unpadded
      frames of its utterance), 'global' ((x - global_mean) / global_std), or 'none'.
    global_mean: per-bin means of the log mel features, for 'global' (else empty).
    global_std: per-bin standard deviations, for 'global' (else empty).
    subsampling: time (and frequency) reduction, a power of 2: one stride-2 3x3 conv per
      factor of 2 (4: 40 ms frames; 1: the normalised log mel itself).
    conv_channels: output channels of each convolution.
    dtype: compute dtype of the convolutions; the spectrogram runs in float32.
    param_dtype: parameter dtype.
  """

  num_mel_bins: int = 80
  sample_rate: int = 16000
  frame_length: int = 400
  frame_step: int = 160
  fft_size: int = 512
  center: bool = True
  mel_scale: str = "slaney"
  lower_edge_hz: float = 0.0
  upper_edge_hz: float = 8000.0
  log_floor: float = 1e-6
  normalization: str = "utterance"
  global_mean: Sequence[float] = ()
  global_std: Sequence[float] = ()
  subsampling: int = 4
  conv_channels: int = 256
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def log_mel(
    self, audio_BxS: jax.Array, audio_paddings_BxS: jax.Array
  ) -> tuple[jax.Array, jax.Array]:
    """Normalised log mel features at frame_step resolution (no parameters).

    Args:
      audio_BxS: f32[B, S] waveform samples, right-padded.
      audio_paddings_BxS: f32[B, S], 1.0 at padding.

    Returns:
      log_mel_BxTxM: f32[B, T, num_mel_bins], T = num_mel_frames(S), zero at padded frames.
      mel_paddings_BxT: f32[B, T], 1.0 where t >= num_mel_frames(valid samples).
    """
    if self.normalization not in ("utterance", "global", "none"):
      raise ValueError(
        f"normalization must be 'utterance', 'global' or 'none', got {self.normalization!r}"
      )
    if self.frame_length > self.fft_size:
      raise ValueError(f"frame_length {self.frame_length} exceeds fft_size {self.fft_size}")
    frames = num_mel_frames(audio_BxS.shape[1], self.frame_length, self.frame_step, self.center)
    valid_BxS = 1.0 - audio_paddings_BxS.astype(jnp.float32)
    num_samples_B = jnp.round(jnp.sum(valid_BxS, axis=1)).astype(jnp.int32)
    audio_BxS = audio_BxS.astype(jnp.float32) * valid_BxS
    if self.center:
      half = self.frame_length // 2
      audio_BxS = jnp.pad(audio_BxS, ((0, 0), (half, self.frame_length - half)))
    index_TxL = np.arange(frames)[:, None] * self.frame_step + np.arange(self.frame_length)[None, :]
    # Periodic Hann window (scipy get_window('hann', fftbins=True), librosa's default).
    window_L = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(self.frame_length) / self.frame_length)
    frames_BxTxL = audio_BxS[:, index_TxL] * jnp.asarray(window_L, jnp.float32)
    spectrum_BxTxF = jnp.fft.rfft(frames_BxTxL, n=self.fft_size, axis=-1)
    power_BxTxF = jnp.square(spectrum_BxTxF.real) + jnp.square(spectrum_BxTxF.imag)
    filters_FxM = mel_filterbank(
      self.num_mel_bins,
      self.sample_rate,
      self.fft_size,
      self.lower_edge_hz,
      self.upper_edge_hz,
      self.mel_scale,
    )
    mel_BxTxM = jnp.einsum(
      "btf,fm->btm",
      power_BxTxF,
      jnp.asarray(filters_FxM, jnp.float32),
      precision=jax.lax.Precision.HIGHEST,
    )
    log_mel_BxTxM = jnp.log(jnp.maximum(mel_BxTxM, self.log_floor))

    paddings_BxT = _frame_paddings(
      num_mel_frames(num_samples_B, self.frame_length, self.frame_step, self.center), frames
    )
    valid_BxTx1 = (1.0 - paddings_BxT)[:, :, None]
    if self.normalization == "utterance":
      count_Bx1x1 = jnp.maximum(jnp.sum(valid_BxTx1, axis=1, keepdims=True), 1.0)
      mean_Bx1xM = jnp.sum(log_mel_BxTxM * valid_BxTx1, axis=1, keepdims=True) / count_Bx1x1
      centred_BxTxM = log_mel_BxTxM - mean_Bx1xM
      var_Bx1xM = jnp.sum(jnp.square(centred_BxTxM) * valid_BxTx1, axis=1, keepdims=True)
      log_mel_BxTxM = centred_BxTxM * jax.lax.rsqrt(var_Bx1xM / count_Bx1x1 + NORM_EPSILON)
    elif self.normalization == "global":
      if len(self.global_mean) != self.num_mel_bins or len(self.global_std) != self.num_mel_bins:
        raise ValueError(
          f"'global' normalization needs {self.num_mel_bins} global_mean and global_std "
          f"values, got {len(self.global_mean)} and {len(self.global_std)}"
        )
      mean_M = jnp.asarray(self.global_mean, jnp.float32)
      log_mel_BxTxM = (log_mel_BxTxM - mean_M) / jnp.asarray(self.global_std, jnp.float32)
    return log_mel_BxTxM * valid_BxTx1, paddings_BxT

  @nn.compact
  def __call__(
    self, audio_BxS: jax.Array, audio_paddings_BxS: jax.Array
  ) -> tuple[jax.Array, jax.Array]:
    """Computes subsampled frame features.

    Args:
      audio_BxS: f32[B, S] waveform samples (16 kHz), right-padded.
      audio_paddings_BxS: f32[B, S], 1.0 at padding.

    Returns:
      features_BxFxC: [B, F, C] in `dtype`, F = num_frames(S), C = conv_channels times
        the bins left after the frequency strides (ceil(80 / 4) = 20 at 4x; C = 80 at
        1x), zero at padded frames.
      frame_paddings_BxF: f32[B, F], 1.0 where f >= num_frames(valid samples).
    """
    x_BxTxM, paddings_BxT = self.log_mel(audio_BxS, audio_paddings_BxS)
    x_BxTxMxC = x_BxTxM[..., None].astype(self.dtype)
    num_valid_B = jnp.sum(1.0 - paddings_BxT, axis=1).astype(jnp.int32)
    for i in range(_num_convs(self.subsampling)):
      x_BxTxMxC = nn.Conv(
        self.conv_channels,
        (3, 3),
        strides=(2, 2),
        padding=((1, 1), (1, 1)),
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=nn.with_logical_partitioning(
          nn.initializers.variance_scaling(2.0, "fan_in", "normal"),
          ("conv", None, None, "embed"),
        ),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        name=f"conv_{i}",
      )(x_BxTxMxC)
      x_BxTxMxC = nn.relu(x_BxTxMxC)
      num_valid_B = (num_valid_B + 1) // 2
      paddings_BxT = _frame_paddings(num_valid_B, x_BxTxMxC.shape[1])
      # The next convolution must see zeros past the end, as the utterance alone would.
      x_BxTxMxC = x_BxTxMxC * (1.0 - paddings_BxT)[:, :, None, None].astype(self.dtype)
    batch, frames, bins, channels = x_BxTxMxC.shape
    features_BxFxC = x_BxTxMxC.reshape(batch, frames, bins * channels)
    features_BxFxC = nn.with_logical_constraint(features_BxFxC, ("batch", "time", "embed"))
    return features_BxFxC, paddings_BxT
