"""Prepared TFDS datasets read without TensorFlow equal TFDS's own reading of them."""

import json
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2

from sslax.data import records


def packed_int64s(values) -> bytes:
  """The packed field protobuf itself writes for an Int64List of `values`."""
  example = tf_example_pb2.Example()
  example.features.feature["x"].int64_list.value.extend(int(v) for v in values)
  return (
    records._RawExample.FromString(example.SerializeToString())
    .features.feature["x"]
    .int64_list.value
  )


def test_int16_varints_decode_as_protobuf_encodes_them():
  rng = np.random.default_rng(0)
  values = np.concatenate(
    [[-32768, -1, 0, 1, 127, 128, 16383, 16384, 32767], rng.integers(-32768, 32768, 10_000)]
  ).astype(np.int16)
  np.testing.assert_array_equal(records.int16_from_varints(packed_int64s(values)), values)
  assert records.int16_from_varints(packed_int64s([])).shape == (0,)


@pytest.mark.parametrize("value", [32768, -32769, 2**40])
def test_values_beyond_int16_are_an_error(value):
  with pytest.raises(ValueError, match="outside the int16 range"):
    records.int16_from_varints(packed_int64s([1, value, 2]))


def assert_same_example(ours: dict, theirs: dict, where: str) -> None:
  assert set(ours) == set(theirs), where
  for key, value in theirs.items():
    if isinstance(value, dict):
      assert_same_example(ours[key], value, f"{where}/{key}")
    elif isinstance(value, np.ndarray):
      np.testing.assert_array_equal(np.asarray(ours[key]), value, err_msg=f"{where}/{key}")
      assert np.asarray(ours[key]).dtype == value.dtype, f"{where}/{key}"
    else:
      assert ours[key] == value, f"{where}/{key}"


@pytest.mark.parametrize("split", ["dev", "train[:7]+test[-5:]", "test[40%:45%]"])
def test_every_feature_of_every_example_equals_tfds(split, demo_data_dir):
  ours = records.PreparedSplit("sslax_demo_corpus", split, demo_data_dir)
  theirs = tfds.builder("sslax_demo_corpus", data_dir=demo_data_dir).as_data_source(split=split)
  assert len(ours) == len(theirs) > 0
  for i in range(len(theirs)):
    example = theirs[i]
    for feature in ("words", "phonemes"):  # TFDS gives Text in a Sequence as a list
      example[feature]["start"] = np.asarray(example[feature]["start"], np.int32)
      example[feature]["end"] = np.asarray(example[feature]["end"], np.int32)
    assert_same_example(ours[i], example, f"{split} example {i}")
    np.testing.assert_array_equal(ours.get(i, "speech"), example["speech"])
    assert ours.get(i, "id") == example["id"]
  with pytest.raises(
    IndexError, match=re.escape(f"example {len(ours)} of sslax_demo_corpus:{split}")
  ):
    ours.record(len(ours))


def test_a_dataset_not_prepared_or_not_in_array_record_is_named(tmp_path, demo_data_dir):
  with pytest.raises(records.NotPreparedError, match=r"'no_such_corpus' is not prepared in"):
    records.PreparedSplit("no_such_corpus", "train", str(tmp_path))
  with pytest.raises(ValueError, match=r"split 'tran' of TFDS dataset 'sslax_demo_corpus'"):
    records.PreparedSplit("sslax_demo_corpus", "tran", demo_data_dir)
  # The same dataset's description, as TFDS writes it for tfrecord files.
  prepared = records.dataset_directory("sslax_demo_corpus", demo_data_dir)
  copy = tmp_path / "sslax_demo_corpus" / "1.0.0"
  copy.mkdir(parents=True)
  info = json.loads((prepared / "dataset_info.json").read_text())
  info["fileFormat"] = "tfrecord"
  (copy / "dataset_info.json").write_text(json.dumps(info))
  (copy / "features.json").write_text((prepared / "features.json").read_text())
  with pytest.raises(ValueError, match=r"holds tfrecord files; sslax reads .* array_record"):
    records.PreparedSplit("sslax_demo_corpus", "train", str(tmp_path))
