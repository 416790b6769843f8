"""Waveform augmentation: each transform measured on signals whose answer is known."""

import numpy as np
import pytest

from sslax.data import augment

RATE = augment.SAMPLE_RATE


def tone(freq, seconds=1.0):
  t = np.arange(int(seconds * RATE)) / RATE
  return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x):
  spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
  return np.argmax(spectrum) * RATE / x.size


@pytest.mark.parametrize("colour, exponent", [("white", 0.0), ("pink", 1.0), ("brown", 2.0)])
def test_coloured_noise_has_the_spectral_slope(colour, exponent):
  noise = augment.coloured_noise(np.random.default_rng(0), 2**16, colour)
  assert abs(noise.mean()) < 1e-6 and abs(noise.std() - 1) < 1e-5
  power = np.abs(np.fft.rfft(noise)) ** 2
  freqs = np.fft.rfftfreq(noise.size)
  # Average power in log-spaced bands, then the log-log slope.
  edges = np.geomspace(freqs[8], freqs[-1], 20)
  centres, levels = [], []
  for lo, hi in zip(edges[:-1], edges[1:], strict=True):
    band = (freqs >= lo) & (freqs < hi)
    centres.append(np.log10(np.sqrt(lo * hi)))
    levels.append(np.log10(power[band].mean()))
  slope = np.polyfit(centres, levels, 1)[0]
  assert abs(slope + exponent) < 0.15, slope


@pytest.mark.parametrize("snr_db", [0.0, 7.5, 20.0])
def test_noise_is_added_at_the_requested_snr(snr_db):
  rng = np.random.default_rng(1)
  audio = tone(300)
  noise = rng.normal(size=5_000).astype(np.float32)  # shorter than the audio: tiled
  out = augment.add_noise(audio, noise, snr_db, rng)
  added = out.astype(np.float64) - audio
  measured = 10 * np.log10(np.mean(audio.astype(np.float64) ** 2) / np.mean(added**2))
  assert out.shape == audio.shape
  assert abs(measured - snr_db) < 1e-3


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_changes_length_and_pitch_together(factor):
  audio = tone(440)
  out = augment.change_speed(audio, factor)
  assert abs(out.size - audio.size / factor) <= 1
  assert abs(peak_hz(out) - 440 * factor) < 2


def test_gain_in_decibels():
  audio = tone(200)
  out = augment.apply_gain(audio, -6.0)
  np.testing.assert_allclose(out, audio * 10 ** (-6 / 20), rtol=1e-6)


def test_augment_is_seeded_and_off_by_default():
  audio = tone(250)
  assert not augment.AugmentConfig().enabled
  np.testing.assert_array_equal(
    augment.augment(audio, augment.AugmentConfig(), np.random.default_rng(0)), audio
  )
  config = augment.AugmentConfig(speed_prob=1.0, gain_prob=1.0, noise_prob=1.0)
  first = augment.augment(audio, config, np.random.default_rng(5))
  again = augment.augment(audio, config, np.random.default_rng(5))
  other = augment.augment(audio, config, np.random.default_rng(6))
  np.testing.assert_array_equal(first, again)
  assert first.shape != other.shape or not np.array_equal(first, other)
  # A noise bank is used instead of generated noise when given.
  bank = [np.full(100, 0.25, np.float32)]
  only_noise = augment.AugmentConfig(noise_prob=1.0, snr_db=(0.0, 0.0))
  out = augment.augment(np.zeros_like(audio) + 0.5, only_noise, np.random.default_rng(0), bank)
  np.testing.assert_allclose(out, 0.5 + 0.5, rtol=1e-6)  # constant noise at 0 dB


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match="config.data.augment.noise_prob"):
    augment.AugmentConfig(noise_prob=1.5)
  with pytest.raises(ValueError, match="noise_colours"):
    augment.AugmentConfig(noise_colours=("violet",))
  with pytest.raises(ValueError, match="speed_factors"):
    augment.AugmentConfig(speed_factors=(0.0, 1.0))
