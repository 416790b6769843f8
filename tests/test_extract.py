"""Tests for sslax.extract: hidden states of files equal transformers' on each file alone.

A small random transformers Wav2Vec2ForPreTraining (group-norm extractor, so padding
would change transformers' own batched answer) is read through `hf:DIR`; three files of
different lengths run in batches of two (the second batch padded with an empty slot). Each
file's every hidden state must equal transformers' `output_hidden_states` on that file
alone, within 1e-4 absolute in float32 (the stable encoder's last against
`last_hidden_state`, see tests/test_interop_hf.py).
"""

import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import hf_models  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from configs import demo  # noqa: E402
from sslax import extract  # noqa: E402
from sslax.interop import hf  # noqa: E402
from sslax.registry import checkpoint, model_types  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
  model = hf_models.perturbed(transformers.Wav2Vec2ForPreTraining(config).eval())
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


def test_files_it_cannot_use_are_named_and_skipped_and_resample_converts_them(
  tmp_path, capsys, caplog
):
  model_config = demo.get_config("tiny").model
  ckpt = str(tmp_path / "ckpt")
  checkpoint.save_sslax_checkpoint(ckpt, model_config, model_types.init_params(model_config, 0))
  t = np.arange(4000) / 16_000
  wide = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
  folder = tmp_path / "audio"
  folder.mkdir()
  soundfile.write(folder / "a.wav", wide, 16_000, subtype="FLOAT")
  soundfile.write(folder / "b.wav", wide[::2], 8_000, subtype="FLOAT")  # a phone line
  soundfile.write(folder / "c.wav", np.stack([wide, wide], axis=1), 16_000, subtype="FLOAT")
  (folder / "d.wav").write_bytes(b"RIFF not really a wave file")
  out = tmp_path / "feats.npz"
  kwargs = dict(batch_size=2, pad_multiple=1600)

  extract.run(ckpt, str(folder), "1", str(out), **kwargs)
  assert sorted(np.load(out).keys()) == ["a/layer_1"]
  assert capsys.readouterr().out.strip().endswith("3 of 4 files skipped (named above)")
  warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
  assert warned[:2] == [
    f"skipping {folder / 'b.wav'}: 8000 Hz, 1 channel(s); sslax models need 16000 Hz mono "
    "(--resample converts it)",
    f"skipping {folder / 'c.wav'}: 16000 Hz, 2 channel(s); sslax models need 16000 Hz mono "
    "(--resample converts it)",
  ]
  assert len(warned) == 3 and warned[2].startswith(f"skipping {folder / 'd.wav'}: cannot decode")

  extract.run(ckpt, str(folder), "1", str(out), resample=True, **kwargs)
  feats = np.load(out)
  assert sorted(feats.keys()) == ["a/layer_1", "b/layer_1", "c/layer_1"]
  # Two equal channels average to the mono file; 8 kHz comes back at 16 kHz's frame count.
  np.testing.assert_array_equal(feats["c/layer_1"], feats["a/layer_1"])
  assert feats["b/layer_1"].shape == feats["a/layer_1"].shape
  assert capsys.readouterr().out.strip().endswith("1 of 4 files skipped (named above)")


def test_unusable_audio_stops_before_the_checkpoint_is_read(tmp_path):
  missing = str(tmp_path / "no_checkpoint_here")
  soundfile.write(tmp_path / "b.wav", np.zeros(800, np.float32), 8_000)
  with pytest.raises(extract.AudioError, match=r"b.wav: 8000 Hz, 1 channel\(s\); sslax models"):
    extract.run(missing, str(tmp_path / "b.wav"), "all", "x.npz", batch_size=1, pad_multiple=1)
  with pytest.raises(extract.AudioError, match=r"none of the 1 audio files under .* \(first: "):
    extract.run(missing, str(tmp_path), "all", "x.npz", batch_size=1, pad_multiple=1)

  # From the command line: one line, no traceback.
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "sslax.extract",
      f"--checkpoint={missing}",
      f"--audio={tmp_path / 'b.wav'}",
      f"--out={tmp_path / 'x.npz'}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
  )
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert (
    result.stderr.strip()
    .splitlines()[-1]
    .startswith(
      f"sslax.extract: {tmp_path / 'b.wav'}: 8000 Hz, 1 channel(s); sslax models need 16000 Hz"
    )
  )
