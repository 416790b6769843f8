"""The README's "Fine-tune on your own recordings", command by command, on a generated folder:
a few speakers' clips at 8 and 16 kHz with transcripts -> the manifest builder -> CTC
fine-tuning with dev validation -> evaluation of held-out speakers, which must score the
trained run's own dataset and split and print its numbers."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("YES", "NO", "UP", "DOWN", "LEFT", "RIGHT", "GO", "STOP")
# speaker: (split, sample rate in Hz, pitch in Hz)
SPEAKERS = {
  "anna": ("train", 8_000, 210.0),
  "ben": ("train", 16_000, 120.0),
  "chloe": ("dev", 16_000, 240.0),
  "dev_kumar": ("test", 8_000, 140.0),
}
CLIPS_PER_SPEAKER = 8


def write_clips(root) -> dict[str, list[tuple[str, str]]]:
  """WAV clips of 0.4-1.5 s (a speaker's pitch with harmonics, in noise) and a .txt
  transcript beside each, in root/SPLIT/SPEAKER/; returns {split: [(relative path, words)]}."""
  rng = np.random.default_rng(0)
  written = {}
  for speaker, (split, rate, pitch) in SPEAKERS.items():
    folder = root / split / speaker
    folder.mkdir(parents=True)
    for i in range(CLIPS_PER_SPEAKER):
      words = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(1 + i % 2))
      t = np.arange(int(rate * (0.4 + 1.1 * i / (CLIPS_PER_SPEAKER - 1)))) / rate
      voice = sum(np.sin(2 * np.pi * pitch * k * t) / k for k in (1, 2, 3))
      samples = 0.2 * voice / 2 + 0.01 * rng.normal(size=len(t))
      soundfile.write(folder / f"{i:02d}.wav", samples.astype(np.float32), rate)
      (folder / f"{i:02d}.txt").write_text(words + "\n")
      written.setdefault(split, []).append((f"{speaker}/{i:02d}.wav", words, len(t)))
  return written


def run(*args: str) -> str:
  """Runs a README command (python -m ...) on one device; returns its output (both streams)."""
  env = dict(os.environ, XLA_FLAGS=xla_flags.FAST_COMPILE)  # a user's single device
  result = subprocess.run(
    [sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True
  )
  output = result.stdout + result.stderr
  assert result.returncode == 0, f"{' '.join(args)} exited {result.returncode}:\n{output}"
  return output


@pytest.mark.slow
def test_folder_to_wer_on_held_out_speakers(tmp_path):
  audio = tmp_path / "my_speech"
  written = write_clips(audio)
  # The test split as a fairseq manifest (.tsv: root, then path<TAB>samples; .wrd beside it).
  manifests = tmp_path / "manifests"
  manifests.mkdir()
  test_clips = written["test"]
  (manifests / "test.tsv").write_text(
    "\n".join([str(audio / "test"), *(f"{path}\t{n}" for path, _, n in test_clips)]) + "\n"
  )
  (manifests / "test.wrd").write_text("".join(f"{words}\n" for _, words, _ in test_clips))
  data_dir = str(tmp_path / "tfds")

  built = run(
    "sslax.data.manifest",
    "--name=my_speech",
    f"--data_dir={data_dir}",
    f"--split=train={audio / 'train'}",
    f"--split=dev={audio / 'dev'}",
    f"--split=test={manifests / 'test.tsv'}",
  )
  assert "resampled" in built, built  # the 8 kHz speakers were converted, and said so

  workdir = str(tmp_path / "my-ctc")
  data = ["--config.data.name=my_speech", f"--config.data.data_dir={data_dir}"]
  trained = run(
    "sslax.main",
    "--config=configs/ctc_short.py:tiny",
    f"--workdir={workdir}",
    *data,
    "--config.total_steps=4",
    "--config.valid.split=dev",
    "--config.valid.every=2",
  )
  assert "writing final checkpoint at step 4" in trained, trained
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    valid = [m for m in map(json.loads, f) if "valid" in m]
  assert [(m["step"], m["valid"]["split"]) for m in valid] == [(2, "dev"), (4, "dev")], valid
  assert all(np.isfinite(m["valid"]["wer"]) for m in valid)
  assert os.path.isdir(os.path.join(workdir, "checkpoints_best"))

  # Evaluation takes the dataset from the run's config.json: no data flags repeated.
  evaluated = run(
    "sslax.main",
    "--config=configs/ctc_short.py:tiny",
    f"--workdir={workdir}",
    "--config.job=evaluate",
  )
  result_path = os.path.join(workdir, "eval_test.json")
  with open(result_path) as f:
    result = json.load(f)
  assert result["dataset"] == "my_speech:test", result["dataset"]  # the run's, not the demo's
  assert len(result["utterances"]) == CLIPS_PER_SPEAKER  # the held-out speaker's clips
  assert "8 utterances scored" in evaluated and f"written to {result_path}" in evaluated
  assert f"WER {result['wer']:.4f}" in evaluated and f"CER {result['cer']:.4f}" in evaluated
