"""A user's own audio (a folder or fairseq manifests) becomes a TFDS dataset sslax reads."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import tensorflow_datasets as tfds

from sslax.data import manifest, manifest_entries, splits

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tone(seconds, rate, channels=1, seed=0):
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * rate)) / rate
  mono = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.normal(size=t.size)
  return np.stack([mono] * channels, axis=1) if channels > 1 else mono


@pytest.fixture
def audio_root(tmp_path):
  """Five files: wav, flac, stereo, 8 kHz, and one that is not audio at all."""
  root = tmp_path / "audio"
  (root / "spk1").mkdir(parents=True)
  (root / "spk2").mkdir()
  soundfile.write(root / "spk1" / "a.wav", tone(1.0, 16_000), 16_000, subtype="PCM_16")
  soundfile.write(root / "spk1" / "b.flac", tone(0.5, 16_000, seed=1), 16_000)
  soundfile.write(root / "spk2" / "c.wav", tone(0.25, 16_000, channels=2), 16_000)
  soundfile.write(root / "spk2" / "d.wav", tone(0.5, 8_000), 8_000, subtype="PCM_16")
  (root / "spk2" / "e.wav").write_bytes(b"RIFF not really a wave file")
  (root / "spk1" / "a.txt").write_text("HELLO  WORLD\n")
  return root


def read_split(data_dir, name, split):
  builder = tfds.builder(name, data_dir=str(data_dir))
  return {ex["id"].decode(): ex for ex in builder.as_data_source(split=split)}


def test_folder_becomes_a_dataset_and_bad_files_are_listed(tmp_path, audio_root):
  data_dir = tmp_path / "tfds"
  manifest.build("my_corpus", {"train": str(audio_root)}, str(data_dir))
  examples = read_split(data_dir, "my_corpus", "train")

  assert sorted(examples) == ["spk1/a", "spk1/b", "spk2/c", "spk2/d"]
  # 16-bit PCM comes back sample for sample.
  written, _ = soundfile.read(audio_root / "spk1" / "a.wav", dtype="int16")
  np.testing.assert_array_equal(examples["spk1/a"]["speech"], written)
  assert examples["spk1/a"]["text"] == b"HELLO WORLD"
  assert examples["spk1/b"]["text"] == b""
  assert examples["spk2/c"]["speech"].shape == (4_000,)  # stereo mixed down
  # 8 kHz resampled to 16 kHz: twice the samples, same tone.
  resampled = examples["spk2/d"]["speech"].astype(np.float32) / 32768
  assert resampled.shape == (8_000,)
  spectrum = np.abs(np.fft.rfft(resampled))
  assert abs(np.argmax(spectrum) * 16_000 / resampled.size - 220) < 3

  skipped = (data_dir / "my_corpus" / "1.0.0" / "sslax_skipped_train.tsv").read_text()
  assert skipped.startswith(str(audio_root / "spk2" / "e.wav") + "\t")

  # The input pipeline opens it like any TFDS audio dataset.
  source, audio_key = splits.open_split("my_corpus", "train", str(data_dir))
  assert audio_key == "speech" and len(source) == 4


def test_fairseq_manifest_with_word_transcripts(tmp_path, audio_root):
  tsv = tmp_path / "train.tsv"
  tsv.write_text(f"{audio_root}\nspk1/a.wav\t16000\nspk2/c.wav\t4000\n")
  (tmp_path / "train.wrd").write_text("HELLO WORLD\nGOOD MORNING\n")
  data_dir = tmp_path / "tfds"
  manifest.build("fs_corpus", {"train": str(tsv)}, str(data_dir))
  examples = read_split(data_dir, "fs_corpus", "train")
  assert {k: v["text"] for k, v in examples.items()} == {
    "spk1/a": b"HELLO WORLD",
    "spk2/c": b"GOOD MORNING",
  }


def test_errors_name_the_file(tmp_path, audio_root):
  bad = tmp_path / "bad.tsv"
  bad.write_text(f"{audio_root}\nspk1/a.wav 16000\n")
  with pytest.raises(ValueError, match=r"bad.tsv:2: expected"):
    manifest.build("bad", {"train": str(bad)}, str(tmp_path / "tfds"))

  tsv = tmp_path / "train.tsv"
  tsv.write_text(f"{audio_root}\nspk1/a.wav\t16000\nspk2/c.wav\t4000\n")
  (tmp_path / "train.wrd").write_text("ONLY ONE LINE\n")
  with pytest.raises(ValueError, match=r"train.wrd has 1 lines but .*train.tsv lists 2"):
    manifest.build("short", {"train": str(tsv)}, str(tmp_path / "tfds"))

  with pytest.raises(ValueError, match=r"e.wav: cannot decode audio"):
    manifest.build("strict", {"train": str(audio_root)}, str(tmp_path / "t2"), on_error="raise")
  with pytest.raises(FileNotFoundError, match="nowhere"):
    manifest.build("none", {"train": str(tmp_path / "nowhere")}, str(tmp_path / "t3"))


def test_command_line(tmp_path, audio_root):
  data_dir = tmp_path / "tfds"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "sslax.data.manifest",
      "--name=cli_corpus",
      f"--data_dir={data_dir}",
      f"--split=train={audio_root / 'spk1'}",
      f"--split=dev={audio_root / 'spk2'}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    # As a user runs it: without the tests' TF_CPP_MIN_LOG_LEVEL (tests/conftest.py).
    env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "This TensorFlow binary is optimized" not in result.stderr  # TensorFlow's C++ INFO
  assert sorted(read_split(data_dir, "cli_corpus", "train")) == ["a", "b"]
  assert sorted(read_split(data_dir, "cli_corpus", "dev")) == ["c", "d"]

  # A user's mistake ends in one line saying what to change, not a traceback.
  again = subprocess.run(result.args, cwd=REPO, capture_output=True, text=True)
  assert again.returncode == 1 and "Traceback" not in again.stderr
  last_line = again.stderr.strip().splitlines()[-1]
  assert last_line.startswith("sslax.data.manifest: dataset 'cli_corpus' already exists")


def test_other_rates_are_skipped_unless_resampling(tmp_path, audio_root):
  data_dir = tmp_path / "tfds"
  manifest.build("no_resample", {"train": str(audio_root)}, str(data_dir), resample=False)
  assert sorted(read_split(data_dir, "no_resample", "train")) == ["spk1/a", "spk1/b", "spk2/c"]
  skipped = (data_dir / "no_resample" / "1.0.0" / "sslax_skipped_train.tsv").read_text()
  assert f"{audio_root / 'spk2' / 'd.wav'}\tsample rate 8000 Hz, not 16000 Hz" in skipped


def test_a_split_of_other_rates_only_is_an_error_naming_it_and_its_list(tmp_path, audio_root):
  with pytest.raises(manifest_entries.UnusableAudio) as error:
    manifest_entries.decode(str(audio_root / "spk2" / "d.wav"), resample=False)
  # The file decodes: the message says what is wrong with it, and what converts it.
  assert str(error.value) == (
    "sample rate 8000 Hz, not 16000 Hz (--resample, the default, converts it)"
  )
  assert manifest_entries.why_skipped("d.wav", error.value) == f"d.wav: {error.value}"
  assert manifest_entries.why_skipped("e.wav", RuntimeError("bad header")) == (
    "e.wav: cannot decode audio (bad header)"
  )

  data_dir = tmp_path / "tfds"
  narrowband = {"train": str(audio_root / "spk1"), "phone": str(audio_root / "spk2")}
  listed = data_dir / "calls" / "1.0.0" / "sslax_skipped_phone.tsv"
  with pytest.raises(ValueError) as error:
    # spk2 holds d.wav (8 kHz), e.wav (not audio) and c.wav (16 kHz, kept with resampling).
    (audio_root / "spk2" / "c.wav").unlink()
    manifest.build("calls", narrowband, str(data_dir), resample=False)
  message = str(error.value)
  assert message.startswith(f"split 'phone' ({audio_root / 'spk2'}): all 2 files were skipped")
  assert "1 x sample rate 8000 Hz, not 16000 Hz" in message and str(listed) in message
  assert sorted(line.split("\t")[0] for line in listed.read_text().splitlines()) == [
    str(audio_root / "spk2" / "d.wav"),
    str(audio_root / "spk2" / "e.wav"),
  ]
  # The failed build left only that list, which must not pass for a dataset to reuse.
  manifest.build("calls", narrowband, str(data_dir), resample=True)
  assert sorted(read_split(data_dir, "calls", "phone")) == ["d"]


@pytest.mark.parametrize("split", ["all", "ALL", "train[:10%]", "dev+test"])
def test_split_names_tfds_cannot_read_back_are_errors_naming_them(tmp_path, audio_root, split):
  with pytest.raises(ValueError, match=rf"split name {re.escape(repr(split))}"):
    manifest.build("named", {split: str(audio_root)}, str(tmp_path / "tfds"))
  assert not (tmp_path / "tfds").exists()  # nothing decoded or written


def test_an_existing_dataset_is_rebuilt_only_with_overwrite(tmp_path, audio_root):
  data_dir = tmp_path / "tfds"
  manifest.build("corpus", {"train": str(audio_root / "spk1")}, str(data_dir))
  with pytest.raises(FileExistsError) as error:
    manifest.build("corpus", {"dev": str(audio_root / "spk2")}, str(data_dir))
  message = str(error.value)
  assert f"dataset 'corpus' already exists in {data_dir / 'corpus' / '1.0.0'} (splits train)" in (
    message
  )
  assert "Pass --overwrite" in message and "to add a split" in message
  assert sorted(read_split(data_dir, "corpus", "train")) == ["a", "b"]  # untouched

  # Adding a split: every split again, with overwrite.
  both = {"train": str(audio_root / "spk1"), "dev": str(audio_root / "spk2")}
  builder = manifest.build("corpus", both, str(data_dir), overwrite=True)
  assert sorted(builder.info.splits) == ["dev", "train"]
  assert sorted(read_split(data_dir, "corpus", "dev")) == ["c", "d"]
  assert (data_dir / "corpus" / "1.0.0" / "sslax_skipped_dev.tsv").exists()
  # A rebuild without the bad file drops its stale list with the old version.
  (audio_root / "spk2" / "e.wav").unlink()
  manifest.build("corpus", both, str(data_dir), overwrite=True)
  assert not (data_dir / "corpus" / "1.0.0" / "sslax_skipped_dev.tsv").exists()


def need_beam():
  # CI installs Apache Beam with the test extra; a developer's venv may predate it.
  if not os.environ.get("CI"):
    pytest.importorskip("apache_beam")


def test_beam_build_equals_the_in_process_build(tmp_path, audio_root):
  need_beam()
  splits = {"train": str(audio_root), "dev": str(audio_root / "spk1")}
  local = manifest.build("corpus", splits, str(tmp_path / "local"))
  options = manifest.beam_flags("runner=DirectRunner,direct_num_workers=1")
  assert options == ["--runner=DirectRunner", "--direct_num_workers=1"]
  beam = manifest.build("corpus", splits, str(tmp_path / "beam"), beam_options=options)
  for split in splits:
    assert beam.info.splits[split].num_examples == local.info.splits[split].num_examples
    expected = list(local.as_data_source(split=split))
    got = list(beam.as_data_source(split=split))
    assert [e["id"] for e in got] == [e["id"] for e in expected]  # the same order
    for a, b in zip(got, expected, strict=True):
      assert a["text"] == b["text"]
      np.testing.assert_array_equal(a["speech"], b["speech"])
  listed = "1.0.0/sslax_skipped_train.tsv"
  assert (tmp_path / "beam" / "corpus" / listed).read_text() == (
    tmp_path / "local" / "corpus" / listed
  ).read_text()
  assert not list((tmp_path / "beam").glob(".sslax_beam_*"))  # the scratch folder is gone
  with pytest.raises(Exception, match=r"e.wav: cannot decode audio"):
    manifest.build(
      "strict",
      splits,
      str(tmp_path / "strict"),
      on_error="raise",
      beam_options=["--runner=DirectRunner"],
    )


def test_command_line_with_beam(tmp_path, audio_root):
  # Beam's workers import sslax.data.manifest beside the program's __main__: its flags
  # must not be defined twice.
  need_beam()
  data_dir = tmp_path / "tfds"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "sslax.data.manifest",
      "--name=cli_beam",
      f"--data_dir={data_dir}",
      f"--split=train={audio_root / 'spk2'}",
      "--beam_pipeline_options=runner=DirectRunner",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert sorted(read_split(data_dir, "cli_beam", "train")) == ["c", "d"]
  skipped = (data_dir / "cli_beam" / "1.0.0" / "sslax_skipped_train.tsv").read_text()
  assert skipped.startswith(str(audio_root / "spk2" / "e.wav") + "\t")
