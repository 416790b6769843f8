"""Tests for sslax.extract: hidden states of files equal transformers' on each file alone.

A small random transformers Wav2Vec2ForPreTraining (group-norm extractor, so padding
would change transformers' own batched answer) is read through `hf:DIR`; three files of
different lengths run in batches of two (the second batch padded with an empty slot). Each
file's every hidden state must equal transformers' `output_hidden_states` on that file
alone, within 1e-4 absolute in float32 (the stable encoder's last against
`last_hidden_state`, see tests/test_interop_hf.py).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from sslax import extract  # noqa: E402
from sslax.interop import checkpoint, hf  # noqa: E402

ATOL = 1e-4
LENGTHS = {"a": 8000, "sub/b": 5600, "c": 3300}


@pytest.mark.parametrize("stable", [False, True])
def test_extract_matches_transformers_alone(tmp_path, stable):
  config = transformers.Wav2Vec2Config(
    hidden_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    conv_dim=(32,) * 7,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
    num_codevectors_per_group=8,
    codevector_dim=16,
    proj_codevector_dim=12,
    do_stable_layer_norm=stable,
  )
  torch.manual_seed(0)
  model = transformers.Wav2Vec2ForPreTraining(config).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(tmp_path / "hf")

  rng = np.random.default_rng(0)
  audio = {}
  for name, n in LENGTHS.items():
    path = tmp_path / "audio" / f"{name}.wav"
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, rng.uniform(-0.5, 0.5, n).astype(np.float32), 16_000, subtype="FLOAT")
    audio[name] = soundfile.read(path, dtype="float32")[0]

  out = tmp_path / "feats.npz"
  extract.run(
    f"hf:{tmp_path / 'hf'}",
    str(tmp_path / "audio"),
    "all",
    str(out),
    batch_size=2,
    pad_multiple=1600,
  )
  feats = np.load(out)
  assert sorted(feats.keys()) == sorted(f"{name}/layer_{i}" for name in LENGTHS for i in range(3))
  for name, samples in audio.items():
    with torch.no_grad():
      theirs = model.wav2vec2(torch.from_numpy(samples)[None], output_hidden_states=True)
    hidden = [h[0].numpy() for h in theirs.hidden_states]
    hidden[-1] = theirs.last_hidden_state[0].numpy()
    for i, h in enumerate(hidden):
      ours = feats[f"{name}/layer_{i}"]
      assert ours.shape == h.shape
      diff = np.max(np.abs(ours - h))
      print(f"stable={stable} {name} layer {i}: {diff:.2e}")
      assert diff <= ATOL, (name, i, diff)

  # An sslax checkpoint directory gives the same, and a layer subset keeps only those.
  model_config, params, _ = hf.import_hf(str(tmp_path / "hf"))
  checkpoint.save_sslax_checkpoint(str(tmp_path / "sslax"), model_config, params)
  extract.run(
    str(tmp_path / "sslax"),
    str(tmp_path / "audio" / "c.wav"),
    "0,2",
    str(out),
    batch_size=1,
    pad_multiple=1600,
  )
  subset = np.load(out)
  assert sorted(subset.keys()) == ["c/layer_0", "c/layer_2"]
  # Alone and padded to a different length: summation orders differ, so not bitwise.
  np.testing.assert_allclose(subset["c/layer_2"], feats["c/layer_2"], rtol=0, atol=1e-5)


def test_parse_layers():
  assert extract.parse_layers("all", 2) == [0, 1, 2]
  assert extract.parse_layers("2,0", 12) == [2, 0]
  with pytest.raises(ValueError, match="outside 0..2"):
    extract.parse_layers("3", 2)
