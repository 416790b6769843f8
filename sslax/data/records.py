"""Prepared TFDS datasets read by index without TensorFlow.

TFDS prepares a dataset (with TensorFlow) into `DATA_DIR/NAME[/CONFIG]/VERSION/`:
`dataset_info.json` (its splits and their shard lengths), `features.json` (its feature tree)
and ArrayRecord shards of serialised `tf.train.Example` protos. Reading them needs neither
TensorFlow nor TFDS's feature classes (whose `Audio` imports TensorFlow), so the training
jobs run on machines without it: `PreparedSplit` finds the directory, resolves a TFDS split
expression ('train', 'a+b', 'train[:10%]') with TFDS's own grammar, reads records with
array_record and decodes them with the Example proto TFDS ships and the feature tree.

Audio stored as samples (TFDS `Audio` without `lazy_decode`) is an int64 varint list in the
proto, about 5 bytes per int16 sample. Converting protobuf's repeated field to numpy costs
about 6 ms per 100k samples, more than everything else a row needs, so `get` parses the
same record with that field declared as bytes (the packed field's wire format) and decodes
the varints with numpy. Encoded audio (`lazy_decode`, e.g.
`librispeech/lazy_decode`'s FLAC) comes back as the file's bytes.
"""

from collections.abc import Sequence
import json
import os
import re
from typing import Any

from array_record.python import array_record_data_source
from etils import epath
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2

_AUDIO = "tensorflow_datasets.core.features.audio_feature.Audio"
_TEXT = "tensorflow_datasets.core.features.text_feature.Text"
_TENSOR = "tensorflow_datasets.core.features.tensor_feature.Tensor"
_CLASS_LABEL = "tensorflow_datasets.core.features.class_label_feature.ClassLabel"
_SCALAR = "tensorflow_datasets.core.features.scalar.Scalar"
_DICT = "tensorflow_datasets.core.features.features_dict.FeaturesDict"
_SEQUENCE = "tensorflow_datasets.core.features.sequence_feature.Sequence"


class NotPreparedError(FileNotFoundError):
  """No prepared copy of a dataset in the data_dir."""


def default_data_dir() -> str:
  """TFDS's default data_dir: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def _version_key(name: str) -> tuple[int, ...]:
  return tuple(int(part) for part in name.split("."))


def dataset_directory(name: str, data_dir: str) -> epath.Path:
  """The prepared directory of TFDS dataset `name` ('NAME', 'NAME/CONFIG', with an optional
  ':VERSION') in `data_dir` ('' = the default): the newest version unless one is named.

  Raises NotPreparedError when there is none, ValueError when `name` leaves the config
  open and several are prepared.
  """
  root = epath.Path(data_dir or default_data_dir())
  name, _, version = name.partition(":")
  base = root / name
  versions = [
    path.name
    for path in (base.iterdir() if base.is_dir() else ())
    if re.fullmatch(r"\d+\.\d+\.\d+", path.name) and (path / "dataset_info.json").exists()
  ]
  if not versions and "/" not in name and base.is_dir():
    configs = sorted(
      path.name for path in base.iterdir() if path.is_dir() and not path.name[0].isdigit()
    )
    if len(configs) > 1:
      raise ValueError(
        f"TFDS dataset {name!r} is prepared in several configs in {root} ({configs}); name one "
        f"as '{name}/CONFIG'"
      )
    if configs:
      return dataset_directory(
        f"{name}/{configs[0]}" + (f":{version}" if version else ""), data_dir
      )
  if version:
    versions = [v for v in versions if v == version]
  if not versions:
    raise NotPreparedError(f"TFDS dataset {name!r} is not prepared in {root}")
  return base / max(versions, key=_version_key)


def _raw_example_class():
  """`tf.train.Example` with every list's packed values read as bytes (module docstring)."""
  field = descriptor_pb2.FieldDescriptorProto
  file = descriptor_pb2.FileDescriptorProto(
    name="sslax_raw_example.proto", package="sslax_raw", syntax="proto3"
  )

  def message(name, fields, into=file.message_type):
    proto = into.add(name=name)
    for number, field_name, kind, type_name, label in fields:
      proto.field.add(
        name=field_name, number=number, type=kind, label=label, type_name=type_name or None
      )
    return proto

  one, many = field.LABEL_OPTIONAL, field.LABEL_REPEATED
  message("Packed", [(1, "value", field.TYPE_BYTES, None, one)])
  message("BytesList", [(1, "value", field.TYPE_BYTES, None, many)])
  packed, bytes_list = ".sslax_raw.Packed", ".sslax_raw.BytesList"
  message(
    "Feature",
    [
      (1, "bytes_list", field.TYPE_MESSAGE, bytes_list, one),
      (2, "float_list", field.TYPE_MESSAGE, packed, one),
      (3, "int64_list", field.TYPE_MESSAGE, packed, one),
    ],
  )
  features = message("Features", [])
  entry = message(
    "FeatureEntry",
    [
      (1, "key", field.TYPE_STRING, None, one),
      (2, "value", field.TYPE_MESSAGE, ".sslax_raw.Feature", one),
    ],
    into=features.nested_type,
  )
  entry.options.map_entry = True
  features.field.add(
    name="feature",
    number=1,
    type=field.TYPE_MESSAGE,
    label=many,
    type_name=".sslax_raw.Features.FeatureEntry",
  )
  message("Example", [(1, "features", field.TYPE_MESSAGE, ".sslax_raw.Features", one)])
  pool = descriptor_pool.DescriptorPool()
  pool.Add(file)
  return message_factory.GetMessageClass(pool.FindMessageTypeByName("sslax_raw.Example"))


_RawExample = _raw_example_class()


def int16_from_varints(packed: bytes) -> np.ndarray:
  """i16[N]: the values of a packed varint list of int16 values.

  Protobuf writes each int64 as 7-bit groups, low first, the high bit set on all but the
  last byte: 0 … 32767 take 1-3 bytes (a third byte of 0 or 1), −32768 … −1 take 10 (two's
  complement: 0x7E set in the third byte, 0x01 last). The low 16 bits come from the first
  3 bytes. Raises ValueError when a varint cannot be an int16 value.
  """
  b = np.frombuffer(packed + b"\0\0", np.uint8)  # 2 bytes of slack for the gathers below
  ends = np.flatnonzero(b[:-2] < 0x80)  # the last byte of each varint
  firsts = np.empty_like(ends)
  if len(ends):
    firsts[0], firsts[1:] = 0, ends[:-1] + 1
  extra = ends - firsts  # bytes after the first
  third = b[firsts + 2].astype(np.uint16)
  if not np.all(
    (extra < 2) | ((extra == 2) & (third <= 1)) | ((extra == 9) & (third & 0x7E == 0x7E))
  ) or not np.all(b[ends[extra == 9]] == 0x01):
    raise ValueError("the stored audio holds values outside the int16 range")
  samples = b[firsts].astype(np.uint16) & 0x7F
  samples |= ((b[firsts + 1].astype(np.uint16) & 0x7F) << 7) * (extra >= 1)
  samples |= ((third & 0x7F) << 14) * (extra >= 2)
  return samples.view(np.int16)


class PreparedSplit(Sequence):
  """The examples of a split expression of a prepared TFDS dataset, by index.

  `split[i]` is example i as a dict (nested like the features: Text as bytes, scalars as
  numbers, tensors and int16 audio as numpy arrays, Sequence features as lists or arrays,
  `lazy_decode` audio as the file's bytes). `get(i, key)` reads one feature, cheaply for
  audio and text (module docstring).

  Attributes:
    name: the dataset's name as given; split: the split expression.
    directory: the prepared directory (where sslax keeps its per-split index files).
    features: the top-level feature tree from features.json (name -> its JSON).
  """

  def __init__(self, name: str, split: str, data_dir: str):
    self.name, self.split = name, split
    self.directory = dataset_directory(name, data_dir)
    with (self.directory / "dataset_info.json").open() as f:
      info = json.load(f)
    with (self.directory / "features.json").open() as f:
      tree = json.load(f)
    if info.get("fileFormat") != "array_record":
      raise ValueError(
        f"{self.directory} holds {info.get('fileFormat', 'tfrecord')} files; sslax reads a "
        "dataset by index from array_record files: prepare it again with "
        "download_and_prepare(file_format='array_record')"
      )
    self.features = tree["featuresDict"]["features"]
    self._specs = _flat_specs(self.features)
    splits = {
      s["name"]: tfds.core.SplitInfo(
        name=s["name"], shard_lengths=[int(n) for n in s.get("shardLengths", [])], num_bytes=0
      )
      for s in info["splits"]
    }
    try:
      instructions = tfds.core.ReadInstruction.from_spec(split).to_absolute(splits)
    except (ValueError, AssertionError) as error:
      raise ValueError(f"split {split!r} of TFDS dataset {name!r}: {error}") from None
    self._parts = []  # (data source over the split's shards, first, stop)
    for instruction in instructions:
      info_split = next(s for s in info["splits"] if s["name"] == instruction.splitname)
      template = tfds.core.ShardedFileTemplate(
        data_dir=self.directory,
        template=info_split.get("filepathTemplate", ""),
        dataset_name=info["name"],
        split=instruction.splitname,
        filetype_suffix="array_record",
      )
      info_lengths = splits[instruction.splitname].shard_lengths
      paths = template.sharded_filepaths(len(info_lengths))
      first = instruction.from_ or 0  # None: from the start / to the end
      stop = sum(info_lengths) if instruction.to is None else instruction.to
      self._parts.append(
        (
          array_record_data_source.ArrayRecordDataSource([os.fspath(p) for p in paths]),
          first,
          stop,
        )
      )
    self._starts = np.cumsum([0] + [stop - first for _, first, stop in self._parts])

  def __len__(self) -> int:
    return int(self._starts[-1])

  def record(self, index: int) -> bytes:
    """The serialised `tf.train.Example` of example `index`."""
    if not 0 <= index < len(self):
      raise IndexError(f"example {index} of {self.name}:{self.split} ({len(self)} examples)")
    part = int(np.searchsorted(self._starts, index, side="right")) - 1
    source, first, _ = self._parts[part]
    return source[first + index - int(self._starts[part])]

  def __getitem__(self, index: int) -> dict[str, Any]:
    example = tf_example_pb2.Example.FromString(self.record(index))
    flat = {}
    for key, feature in example.features.feature.items():
      spec = self._specs.get(key)
      if spec is not None:
        flat[key] = _value(feature, *spec)
    nested: dict[str, Any] = {}
    for key, value in flat.items():
      *parents, leaf = key.split("/")
      into = nested
      for parent in parents:
        into = into.setdefault(parent, {})
      into[leaf] = value
    return nested

  def get(self, index: int, key: str):
    """Feature `key` of example `index` (as `split[index][key]` has it), parsing only that
    feature where it is text, encoded audio or int16 audio (module docstring)."""
    kind = self._specs[key][0]
    if kind == "bytes":
      values = _RawExample.FromString(self.record(index)).features.feature[key].bytes_list.value
      return values[0] if values else b""
    if kind == "audio_int16":
      packed = _RawExample.FromString(self.record(index)).features.feature[key].int64_list.value
      return int16_from_varints(packed)
    return self[index][key]

  def kind(self, key: str) -> str:
    """The pythonClassName's last part of top-level feature `key` ('Audio', 'Text', ...)."""
    return self.features[key]["pythonClassName"].rsplit(".", 1)[-1]


def _flat_specs(
  features: dict, prefix: str = "", in_sequence: bool = False
) -> dict[str, tuple[str, str, tuple]]:
  """Proto key ('words/start') -> (kind, numpy dtype, shape) of every stored feature.

  kind: 'bytes' (Text, encoded audio), 'audio_int16' (int16 samples, mono), 'tensor'
  (numbers reshaped to shape, () a scalar), 'text_list' (Text inside a Sequence).
  """
  specs = {}
  for name, feature in features.items():
    key, kind = prefix + name, feature["pythonClassName"]
    if kind == _DICT:
      specs.update(_flat_specs(feature["featuresDict"]["features"], key + "/", in_sequence))
    elif kind == _SEQUENCE:
      inner = feature["sequence"]["feature"]
      if inner["pythonClassName"] == _DICT:
        specs.update(_flat_specs(inner["featuresDict"]["features"], key + "/", True))
      else:
        specs.update(_flat_specs({name: inner}, prefix, True))
    elif kind == _TEXT:
      specs[key] = ("text_list" if in_sequence else "bytes", "object", ())
    elif kind == _AUDIO:
      audio = feature["audio"]
      dims = tuple(int(d) for d in audio.get("shape", {}).get("dimensions", ["-1"]))
      if audio.get("lazyDecode"):
        specs[key] = ("bytes", "object", ())
      elif audio.get("dtype", "int64") == "int16" and len(dims) == 1 and not in_sequence:
        specs[key] = ("audio_int16", "int16", dims)
      else:
        specs[key] = ("tensor", audio.get("dtype", "int64"), dims)
    elif kind in (_TENSOR, _SCALAR, _CLASS_LABEL):
      tensor = feature.get("tensor") or feature.get("scalar") or {}
      dims = tuple(int(d) for d in tensor.get("shape", {}).get("dimensions", []))
      dtype = tensor.get("dtype", "int64")
      if dtype == "string":  # bytes, as Text
        specs[key] = ("text_list" if in_sequence or dims else "bytes", "object", ())
      else:
        specs[key] = ("tensor", dtype, ((-1,) + dims) if in_sequence else dims)
  return specs


def _value(feature, kind: str, dtype: str, shape: tuple):
  """A feature's value from its proto (`_flat_specs` kinds)."""
  if kind == "bytes":
    values = feature.bytes_list.value
    return values[0] if values else b""
  if kind == "text_list":
    return list(feature.bytes_list.value)
  if feature.HasField("float_list"):
    array = np.asarray(feature.float_list.value, np.float32)
  else:
    array = np.asarray(feature.int64_list.value, np.int64)
  array = array.astype(dtype)
  if not shape:
    return array.item() if array.size == 1 else array
  return array.reshape(shape)
