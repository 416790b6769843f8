"""Tests for sslax.models.spectrogram: librosa agreement, frame counts, padding invariance.

librosa is the reference for the log mel values: `librosa.feature.melspectrogram` of the
same audio in float64 (Hann window of 400 samples in a 512-point FFT, hop 160, power 2,
80 bins over 0-8 kHz, Slaney or HTK scale, Slaney area normalisation), then
log(max(mel, 1e-6)). The float32 JAX values agree within LOG_MEL_ATOL = 1e-4 absolute
in the log domain (measured about 2e-5); the filterbank itself within 1e-12.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest

from sslax.models import spectrogram

LOG_MEL_ATOL = 1e-4
SAMPLE_RATE = 16000


def _audio(num_samples, seed=0):
  """A chirp (200 Hz rising 3 kHz per second) plus a little noise, float32."""
  t = np.arange(num_samples) / SAMPLE_RATE
  noise = np.random.default_rng(seed).normal(size=num_samples)
  return (0.5 * np.sin(2 * np.pi * (200 + 3000 * t) * t) + 0.05 * noise).astype(np.float32)


@pytest.mark.parametrize("scale", ["slaney", "htk"])
def test_filterbank_matches_librosa(scale):
  ours = spectrogram.mel_filterbank(80, SAMPLE_RATE, 512, 0.0, 8000.0, scale)
  theirs = librosa.filters.mel(
    sr=SAMPLE_RATE, n_fft=512, n_mels=80, fmin=0.0, fmax=8000.0, htk=scale == "htk", dtype=float
  )
  np.testing.assert_allclose(ours, theirs.T, atol=1e-12, rtol=0)


@pytest.mark.parametrize("scale,center", [("slaney", True), ("htk", False)])
def test_log_mel_matches_librosa(scale, center):
  lengths = (12345, 7001)
  audio_BxS = np.zeros((2, max(lengths)), np.float32)
  paddings_BxS = np.ones_like(audio_BxS)
  for b, n in enumerate(lengths):
    audio_BxS[b, :n] = _audio(n, seed=b)
    paddings_BxS[b, :n] = 0.0
  frontend = spectrogram.LogMelFrontend(normalization="none", mel_scale=scale, center=center)
  log_mel_BxTxM, paddings_BxT = jax.jit(lambda a, p: frontend.apply({}, a, p, method="log_mel"))(
    audio_BxS, paddings_BxS
  )
  for b, n in enumerate(lengths):
    audio = audio_BxS[b, :n].astype(np.float64)
    if not center:
      # librosa frames span n_fft = 512 samples with the 400-sample window in the middle;
      # 56 zeros each side put its frame t's window on samples [160 t, 160 t + 400).
      audio = np.pad(audio, (56, 56))
    mel = librosa.feature.melspectrogram(
      y=audio,
      sr=SAMPLE_RATE,
      n_fft=512,
      hop_length=160,
      win_length=400,
      window="hann",
      center=center,
      pad_mode="constant",
      power=2.0,
      n_mels=80,
      fmin=0.0,
      fmax=8000.0,
      htk=scale == "htk",
    )
    expected_TxM = np.log(np.maximum(mel, 1e-6)).T
    frames = spectrogram.num_mel_frames(n, center=center)
    assert expected_TxM.shape == (frames, 80)
    diff = np.max(np.abs(np.asarray(log_mel_BxTxM[b, :frames]) - expected_TxM))
    print(scale, f"center={center} utterance {b}: max |log mel diff| {diff:.1e}")
    assert diff <= LOG_MEL_ATOL
    np.testing.assert_array_equal(paddings_BxT[b], np.arange(paddings_BxT.shape[1]) >= frames)
    np.testing.assert_array_equal(log_mel_BxTxM[b, frames:], 0.0)


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("subsampling", [1, 2, 4, 8])
def test_num_frames_matches_module_output(center, subsampling):
  frontend = spectrogram.LogMelFrontend(center=center, subsampling=subsampling, conv_channels=4)
  audio = jnp.zeros((1, 4000))
  variables = jax.eval_shape(lambda: frontend.init(jax.random.key(0), audio, audio))
  lengths = [1, 159, 160, 161, 399, 400, 401, 559, 560, 561, 1280, 1281, 1440, 1441]
  lengths += np.random.default_rng(subsampling).integers(1, 6000, size=12).tolist()
  for num_samples in lengths:
    audio = jax.ShapeDtypeStruct((1, num_samples), jnp.float32)
    features, paddings = jax.eval_shape(frontend.apply, variables, audio, audio)
    frames = spectrogram.num_frames(num_samples, center=center, subsampling=subsampling)
    assert features.shape[1] == frames, num_samples
    assert paddings.shape == (1, frames)
  # Python ints, numpy and jax arrays agree.
  expected = [spectrogram.num_frames(n, center=center, subsampling=subsampling) for n in lengths]
  assert all(type(e) is int for e in expected)
  np.testing.assert_array_equal(
    spectrogram.num_frames(np.asarray(lengths), center=center, subsampling=subsampling), expected
  )
  traced = jax.jit(lambda n: spectrogram.num_frames(n, center=center, subsampling=subsampling))(
    jnp.asarray(lengths)
  )
  np.testing.assert_array_equal(traced, expected)


def test_num_frames_of_standard_settings():
  # 1 s: 101 centred 10 ms frames -> 26 frames of 40 ms; 0 samples give no frame.
  assert spectrogram.num_mel_frames(16000) == 101
  assert spectrogram.num_frames(16000) == 26
  assert spectrogram.num_frames(16000, subsampling=8) == 13
  assert spectrogram.num_frames(0) == 0
  assert spectrogram.num_mel_frames(16000, center=False) == 98
  with pytest.raises(ValueError, match="power of 2"):
    spectrogram.num_frames(16000, subsampling=3)


@pytest.mark.parametrize("center", [True, False])
def test_padding_changes_nothing_in_unpadded_frames(center):
  short, long = _audio(3217, seed=1), _audio(6400, seed=2)
  audio_BxS = np.stack([np.pad(short, (0, 6400 - 3217), constant_values=100.0), long])
  paddings_BxS = np.zeros_like(audio_BxS)
  paddings_BxS[0, 3217:] = 1.0
  frontend = spectrogram.LogMelFrontend(center=center, conv_channels=8)
  shapes = jax.eval_shape(lambda: frontend.init(jax.random.key(0), audio_BxS, paddings_BxS))
  # Random kernels and non-zero biases, so a convolution over zeroed padding does not
  # give zeros by chance.
  rng = np.random.default_rng(0)
  variables = jax.tree.map(
    lambda s: (0.3 * rng.normal(size=s.shape) + 0.1).astype(np.float32), nn.unbox(shapes)
  )
  apply = jax.jit(frontend.apply)
  features_BxFxC, paddings_BxF = apply(variables, audio_BxS, paddings_BxS)
  alone_1xFxC, alone_paddings = apply(variables, short[None], np.zeros((1, 3217), np.float32))
  frames = spectrogram.num_frames(3217, center=center)
  assert alone_1xFxC.shape[1] == frames
  assert features_BxFxC.shape[-1] == 8 * 20
  np.testing.assert_array_equal(alone_paddings, 0.0)
  np.testing.assert_array_equal(paddings_BxF[0], np.arange(paddings_BxF.shape[1]) >= frames)
  np.testing.assert_array_equal(paddings_BxF[1], 0.0)
  np.testing.assert_allclose(features_BxFxC[0, :frames], alone_1xFxC[0], atol=1e-5, rtol=1e-5)
  np.testing.assert_array_equal(features_BxFxC[0, frames:], 0.0)
  assert np.all(np.isfinite(features_BxFxC))


def test_normalizations():
  lengths = (9000, 4321)
  audio_BxS = np.stack([_audio(9000, seed=3), np.pad(_audio(4321, seed=4), (0, 9000 - 4321))])
  paddings_BxS = (np.arange(9000)[None, :] >= np.asarray(lengths)[:, None]).astype(np.float32)

  def log_mel(**kwargs):
    frontend = spectrogram.LogMelFrontend(**kwargs)
    return frontend.apply({}, audio_BxS, paddings_BxS, method="log_mel")

  raw_BxTxM, paddings_BxT = log_mel(normalization="none")
  raw_BxTxM = np.asarray(raw_BxTxM, np.float64)
  per_utterance_BxTxM, _ = log_mel(normalization="utterance")
  for b, n in enumerate(lengths):
    frames = spectrogram.num_mel_frames(n)
    valid = raw_BxTxM[b, :frames]
    expected = (valid - valid.mean(0)) / np.sqrt(valid.var(0) + spectrogram.NORM_EPSILON)
    np.testing.assert_allclose(per_utterance_BxTxM[b, :frames], expected, atol=2e-5)
  mean_M = np.linspace(-5.0, 1.0, 80)
  std_M = np.linspace(1.0, 3.0, 80)
  global_BxTxM, _ = log_mel(
    normalization="global", global_mean=tuple(mean_M), global_std=tuple(std_M)
  )
  valid_BxTx1 = (1.0 - np.asarray(paddings_BxT))[:, :, None]
  np.testing.assert_allclose(global_BxTxM, (raw_BxTxM - mean_M) / std_M * valid_BxTx1, atol=1e-5)
  with pytest.raises(ValueError, match="global_mean"):
    log_mel(normalization="global")


def test_layout_and_logical_names():
  frontend = spectrogram.LogMelFrontend(subsampling=8, conv_channels=4)
  audio = jnp.zeros((1, 4000))
  variables = jax.eval_shape(lambda: frontend.init(jax.random.key(0), audio, audio))
  names = nn.get_partition_spec(variables)["params"]
  assert set(names) == {"conv_0", "conv_1", "conv_2"}
  assert tuple(names["conv_0"]["kernel"]) == ("conv", None, None, "embed")
  assert nn.unbox(variables)["params"]["conv_1"]["kernel"].shape == (3, 3, 4, 4)
