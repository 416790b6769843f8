"""sslax.analysis: CCA against independent references, frame alignment, probe, the CLI."""

import json
import math
import os

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from sklearn import cross_decomposition

from configs import demo, demo_conformer
from sslax.analysis import cca, layers
from sslax.models import backbone, frontends, spectrogram
from sslax.registry import checkpoint, model_types
from sslax.units import quality


def _orthonormal(n: int, k: int, seed: int) -> np.ndarray:
  """f64[n, k] centred, orthonormal columns (inner products exactly as constructed)."""
  z = np.random.default_rng(seed).standard_normal((n, k))
  q, _ = np.linalg.qr(z - z.mean(0))
  return q


def _views_with_correlations(rho, n=3000, seed=0):
  """X [n, k] and Y [n, k + 1], mixed by random invertible maps, whose canonical
  correlations are exactly `rho` (CCA is invariant to invertible linear maps)."""
  k = len(rho)
  z = _orthonormal(n, 2 * k + 1, seed)
  rho = np.asarray(rho)
  x = z[:, :k]
  y = np.concatenate([rho * z[:, :k] + np.sqrt(1 - rho**2) * z[:, k : 2 * k], z[:, -1:]], 1)
  rng = np.random.default_rng(seed + 1)
  return x @ rng.standard_normal((k, k)) + 3.0, y @ rng.standard_normal((k + 1, k + 1)) - 1.0


def test_cca_finds_known_correlations_like_principal_angles_and_sklearn():
  rho = [0.9, 0.6, 0.3]
  x, y = _views_with_correlations(rho)
  fitted = cca.fit(x, y, epsilon=0.0)
  np.testing.assert_allclose(fitted.correlations, rho, atol=1e-9)
  # Independent reference: cosines of the principal angles between the centred column
  # spaces are the canonical correlations (Bjorck & Golub 1973).
  angles = scipy.linalg.subspace_angles(x - x.mean(0), y - y.mean(0))
  np.testing.assert_allclose(np.sort(np.cos(angles))[::-1], fitted.correlations, atol=1e-9)
  # scikit-learn's iterative (NIPALS) CCA: the correlations of its score pairs.
  x_scores, y_scores = (
    cross_decomposition.CCA(n_components=3, max_iter=2000, tol=1e-12).fit(x, y).transform(x, y)
  )
  sk = [abs(np.corrcoef(x_scores[:, i], y_scores[:, i])[0, 1]) for i in range(3)]
  np.testing.assert_allclose(sk, rho, atol=1e-4)
  # The fitted projections give unit-variance, mutually uncorrelated variates.
  variates = (x - fitted.mean_x) @ fitted.proj_x
  np.testing.assert_allclose(variates.T @ variates / len(x), np.eye(3), atol=1e-8)


def test_pwcca_weights_by_share_of_the_smaller_view():
  # X = [3 z1, z2]: the canonical variates are z1 and z2, so Morcos et al.'s weights
  # sum_j |<h_i, x_j>| are 3 and 1: PWCCA = 0.75 cos(a) + 0.25 cos(b).
  z = _orthonormal(500, 5, seed=3)
  a, b = 0.3, 1.2
  x = np.stack([3 * z[:, 0], z[:, 1]], 1)
  y = np.stack(
    [math.cos(a) * z[:, 0] + math.sin(a) * z[:, 2], math.cos(b) * z[:, 1] + math.sin(b) * z[:, 3]]
    + [z[:, 4]],
    1,
  )
  result = cca.pwcca(x, y, x, y, epsilon=0.0)
  assert result["weighted_view"] == "x" and (result["dims_x"], result["dims_y"]) == (2, 3)
  np.testing.assert_allclose(result["weights"], [0.75, 0.25], atol=1e-9)
  np.testing.assert_allclose(result["pwcca"], 0.75 * math.cos(a) + 0.25 * math.cos(b), atol=1e-9)
  np.testing.assert_allclose(result["mean"], (math.cos(a) + math.cos(b)) / 2, atol=1e-9)


def test_pwcca_scores_held_out_items_and_reduces_by_variance():
  rng = np.random.default_rng(0)
  # Unrelated views: in-sample CCA finds sizeable correlations, held-out ones are ~0.
  x, y = rng.standard_normal((400, 30)), rng.standard_normal((400, 20))
  result = cca.pwcca(x[:200], y[:200], x[200:], y[200:])
  assert result["fit_correlations"][0] > 0.5
  assert abs(result["pwcca"]) < 0.1
  # Related views generalise: Y is a noisy linear map of X's first 3 directions.
  y = x[:, :3] @ rng.standard_normal((3, 5)) + 0.1 * rng.standard_normal((400, 5))
  assert cca.pwcca(x[:200], y[:200], x[200:], y[200:])["pwcca"] > 0.8
  # 2 directions hold all but 1e-4 of X's variance: 0.99 keeps them, 1.0 keeps all 3.
  x = np.concatenate([rng.standard_normal((400, 2)), 1e-2 * rng.standard_normal((400, 1))], 1)
  assert cca.fit(x, y, keep_variance_x=0.99).dims_x == 2
  assert cca.fit(x, y).dims_x == 3


def test_cca_rejects_mismatched_views():
  with pytest.raises(ValueError, match="one N"):
    cca.fit(np.zeros((5, 2)), np.zeros((4, 2)))
  with pytest.raises(ValueError, match="no variance"):
    cca.fit(np.ones((5, 2)), np.random.default_rng(0).standard_normal((5, 2)))


def _supports(apply_fn, num_samples: int, frames: list[int]) -> tuple[list[tuple[int, int]], int]:
  """((first, last) input sample each of `frames`' gradient reaches: its receptive field,
  the number of output frames)."""
  audio = jnp.asarray(np.random.default_rng(0).standard_normal((1, num_samples)), jnp.float32)
  out = jax.eval_shape(apply_fn, audio)
  pull_back = jax.jit(lambda cotangent: jax.vjp(apply_fn, audio)[1](cotangent)[0])
  found = []
  for t in frames:
    cotangent = (
      jnp.zeros_like(out)
      .at[0, t]
      .set(jnp.asarray(np.random.default_rng(t).standard_normal(out.shape[2:]), out.dtype))
    )
    touched = np.flatnonzero(np.abs(np.asarray(pull_back(cotangent)[0])) > 0)
    found.append((int(touched[0]), int(touched[-1])))
  return found, out.shape[1]


def _check_alignment(model_config, apply_fn, num_samples: int, frames: list[int]) -> None:
  """Frame centres and labels from `backbone.frame_centre_offset` match the receptive
  fields measured by gradient."""
  supports, num_frames = _supports(apply_fn, num_samples, frames)
  assert num_frames == backbone.num_frames(num_samples, model_config)
  hop = 16_000 / backbone.frame_rate_hz(model_config)
  offset = backbone.frame_centre_offset(model_config)
  centres = [t * hop + offset for t in frames]
  for centre, (first, last) in zip(centres, supports, strict=True):
    assert abs(centre - (first + last) / 2) <= 0.5, (centre, first, last)
  # Labels: one-sample spans at the measured centres, so a centre one sample off loses its
  # label.
  measured = [(first + last + 1) // 2 for first, last in supports]
  spans = [(f"p{i}", m, m + 1) for i, m in enumerate(measured)]
  labels = quality.frame_phones(spans, num_frames, backbone.frame_rate_hz(model_config), offset)
  assert [labels[t] for t in frames] == [f"p{i}" for i in range(len(frames))]


def test_frame_alignment_waveform_frontend():
  model_config = demo.get_config("tiny").model
  # Layer norm per frame: the group norm's statistics span the whole utterance, which
  # would make every frame depend on every sample.
  frontend = frontends.WaveformFrontend(tuple(model_config.conv_layers), mode="layer_norm")
  num_samples = 4000
  paddings = jnp.zeros((1, num_samples))
  variables = frontend.init(jax.random.PRNGKey(0), jnp.zeros((1, num_samples)), paddings)
  assert backbone.frame_centre_offset(model_config) == 200  # fairseq's 400-sample field

  def apply_fn(audio):
    return frontend.apply(variables, audio, paddings)[0]

  _check_alignment(model_config, apply_fn, num_samples, [0, 3, 7, 11])


def test_frame_alignment_logmel_frontend():
  model_config = demo_conformer.get_config("logmel,tiny").model
  assert model_config.frontend == "logmel"
  # Per-utterance normalisation would also spread every frame over the utterance.
  frontend = spectrogram.LogMelFrontend(
    num_mel_bins=16,
    subsampling=model_config.mel_subsampling,
    conv_channels=8,
    normalization="none",
  )
  num_samples = 8000
  paddings = jnp.zeros((1, num_samples))
  variables = frontend.init(jax.random.PRNGKey(0), jnp.zeros((1, num_samples)), paddings)
  assert backbone.frame_centre_offset(model_config) == 0  # centred mel frames

  def apply_fn(audio):
    return frontend.apply(variables, audio, paddings)[0]

  # Interior frames: the first two and the last see zero padding (centring, convolutions).
  _check_alignment(model_config, apply_fn, num_samples, [2, 5, 8, 11])


def test_acoustic_frames_take_the_frame_at_each_centre():
  waveform = np.zeros(16_000, np.float32)
  waveform[8_000:8_800] = np.sin(np.arange(800) * 0.3)  # a burst centred near sample 8400
  for kind in layers.ACOUSTIC:
    frames = layers.acoustic_frames(waveform, np.array([8_400.0, 2_000.0, 14_000.0]), kind)
    energy = frames[:, 0] if kind == "mfcc" else frames.mean(1)  # c0 / mean log mel
    assert energy[0] > energy[1] + 5 and energy[0] > energy[2] + 5, (kind, energy)


def test_segment_means_pool_each_spans_frames():
  frames = np.arange(12, dtype=np.float32).reshape(6, 2)
  means, kept = layers.segment_means(frames, np.array([0, 0, -1, 2, 2, 2]), 4)
  np.testing.assert_array_equal(kept, [0, 2])
  np.testing.assert_allclose(means, [[1, 2], [8, 9]])


def test_probe_separates_separable_classes_and_not_noise():
  rng = np.random.default_rng(0)
  centres = rng.standard_normal((3, 8)) * 4
  labels = rng.integers(0, 3, 600)
  x = centres[labels] + rng.standard_normal((600, 8))
  names = [f"c{i}" for i in labels]
  assert layers.probe_accuracy(x[:300], names[:300], x[300:], names[300:], 1e-3) > 0.95
  shuffled = list(rng.permutation(names))
  assert layers.probe_accuracy(x[:300], shuffled[:300], x[300:], shuffled[300:], 1e-3) < 0.5
  # A label never seen in fitting is an error, not skipped.
  assert layers.probe_accuracy(x[:300], names[:300], x[300:302], ["new", "new"], 1e-3) == 0.0


@pytest.mark.parametrize(
  "model_config, layer_names, dims",
  [
    # The conv stack's 32 channels; a 2-layer width-32 Transformer.
    (demo.get_config("tiny").model, ["frontend", 0, 1, 2], [32, 32, 32, 32]),
    # 4 channels x 80 / 4 mel bins after the 4x subsampling; one batch-norm conformer block.
    (demo_conformer.get_config("logmel,tiny").model, ["frontend", 0, 1], [80, 32, 32]),
  ],
  ids=["waveform", "logmel"],
)
def test_cli_writes_json_and_png_for_every_layer(
  model_config, layer_names, dims, tmp_path, demo_data_dir, capsys
):
  path = str(tmp_path / "ckpt")
  # A batch-norm conformer's running statistics as initialised: mean 0, variance 1.
  state = {
    name: (np.ones if name.endswith("/var") else np.zeros)(shape, np.float32)
    for name, shape in model_types.state_shapes(model_config).items()
  }
  checkpoint.save_sslax_checkpoint(
    path,
    model_config,
    model_types.init_params(model_config, 0),
    model_state=flax.traverse_util.unflatten_dict(state, sep="/"),
  )
  out = str(tmp_path / "out")
  args = [f"--checkpoint={path}", "--data=sslax_demo_corpus", "--split=dev[:8]", f"--out={out}"]
  args += [f"--data_dir={demo_data_dir}", "--min_word_count=2", "--pad_multiple=160000"]
  layers.main(args)
  result = json.load(open(os.path.join(out, "layers.json")))
  assert [r["layer"] for r in result["layers"]] == layer_names
  assert result["utterances"] == {"fit": 4, "eval": 4}
  assert [r["dim"] for r in result["layers"]] == dims
  assert "previous_layer" not in result["layers"][0]
  for row in result["layers"]:
    values = [row[p]["pwcca"] for p in layers.PROPERTIES] + [row["probe_accuracy"]]
    values += [row["previous_layer"]["pwcca"]] if row["layer"] != "frontend" else []
    assert all(np.isfinite(values)) and all(-1 <= v <= 1 for v in values), row
  assert result["word_segments"]["fit"] > 0 and result["phone_segments"]["eval"] > 0
  with open(os.path.join(out, "layers.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  printed = capsys.readouterr().out
  assert "frontend" in printed and "probe chance" in printed
  with pytest.raises(ValueError, match="min_word_count"):
    layers.main(args[:-2] + ["--min_word_count=1000", "--pad_multiple=160000"])
