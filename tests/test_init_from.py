"""Starting pretraining from an sslax or Hugging Face checkpoint (`config.init_from`)."""

import logging
import os
import subprocess
import sys

import flax.traverse_util
import numpy as np
import pytest
import tiny_steps

from configs import demo
from sslax import describe, init_from
from sslax.core import checkpoints, text
from sslax.interop import hf
from sslax.registry import checkpoint, model_types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_merge_loads_what_exists_and_lists_the_rest(caplog):
  caplog.set_level(logging.INFO)
  fresh = {"a": {"kernel": np.zeros((2, 3))}, "head": {"kernel": np.zeros((3,))}}
  loaded = {"a/kernel": np.ones((2, 3)), "unused/bias": np.ones(4)}
  params, newly = init_from.merge(fresh, loaded, "SRC")
  np.testing.assert_array_equal(params["a"]["kernel"], np.ones((2, 3)))
  np.testing.assert_array_equal(params["head"]["kernel"], np.zeros(3))
  assert newly == ["head/kernel"]
  assert "left out: ['unused/bias']" in caplog.text


def test_merge_rejects_a_shape_mismatch_naming_the_parameter():
  with pytest.raises(ValueError, match="a/kernel"):
    init_from.merge({"a": {"kernel": np.zeros((2, 3))}}, {"a/kernel": np.ones((3, 3))}, "SRC")
  with pytest.raises(ValueError, match="shares no parameter"):
    init_from.merge({"a": {"kernel": np.zeros(2)}}, {"b": np.ones(2)}, "SRC")


def test_align_ctc_head_moves_columns_to_the_runs_tokens(caplog):
  caplog.set_level(logging.INFO)
  fixed = (*text.SPECIALS, text.WORD_DELIMITER)
  source_vocab = text.Vocabulary((*fixed, "A", "B", "C"))
  run_vocab = text.Vocabulary((*fixed, "C", "A", "D", "E"))
  width = 3
  kernel = np.arange(width * len(source_vocab), dtype=np.float32).reshape(width, -1)
  params = {"lm_head/kernel": kernel, "lm_head/bias": kernel[0] + 0.5, "enc/w": np.ones(2)}
  source = init_from.Source(params, [], source_vocab)
  fresh = {
    "lm_head/kernel": np.full((width, len(run_vocab)), -1.0),
    "lm_head/bias": np.full(len(run_vocab), -1.0),
    "enc/w": np.zeros(2),
  }
  aligned = init_from.align_ctc_head(source, run_vocab, fresh, "SRC")
  # Run column <- source column, by token; D and E keep their fresh values.
  n = len(fixed)
  origin = [*range(n), n + 2, n, None, None]
  for path in ("lm_head/kernel", "lm_head/bias"):
    assert aligned[path].shape == fresh[path].shape
    for i, j in enumerate(origin):
      expected = fresh[path][..., i] if j is None else params[path][..., j]
      np.testing.assert_array_equal(aligned[path][..., i], expected, err_msg=f"{path} {i}")
  assert aligned["enc/w"] is params["enc/w"]
  assert "fresh for ['D', 'E'], the source's ['B'] dropped" in caplog.text
  # The same vocabulary, or a run without one (pretraining): the source as it is.
  assert init_from.align_ctc_head(source, source_vocab, fresh, "SRC") is params
  assert init_from.align_ctc_head(source, None, fresh, "SRC") is params


def test_a_source_of_another_architecture_is_an_error_naming_each_field(tmp_path):
  model_config = demo.get_config("tiny").model
  differences = model_types.architecture_differences
  assert differences(model_config, model_config) == []

  def changed(**fields):
    config = model_config.copy_and_resolve_references()
    config.update(fields)
    return config

  # Fine-tuning may change regularisation and depth; a Transformer ignores conformer fields.
  assert (
    differences(changed(dropout=0.5, num_layers=1, conformer_conv_kernel=3), model_config) == []
  )
  assert differences(changed(encoder="conformer", conformer_conv_kernel=3), model_config) == [
    "encoder: 'conformer' there, 'transformer' here"
  ]
  pre_ln = changed(layer_norm_first=not model_config.layer_norm_first)
  expected = [
    f"layer_norm_first: {pre_ln.layer_norm_first!r} there, {model_config.layer_norm_first!r} here"
  ]
  assert differences(pre_ln, model_config) == expected
  # Same names and shapes, another computation: loading would run silently, so it is refused.
  source_dir = str(tmp_path / "pre_ln")
  checkpoint.save_sslax_checkpoint(source_dir, pre_ln, model_types.init_params(pre_ln, seed=0))
  with pytest.raises(ValueError, match="another architecture:\n  layer_norm_first: "):
    init_from.initial_state(None, None, source_dir, model_config=model_config)


# Each shipped fine-tuning config and the pretraining configs whose runs it starts from.
SHIPPED_PAIRS = [
  ("demo.py", "demo_ctc.py"),
  *[("w2v_base.py", f"ctc_base_{labels}.py") for labels in ("10m", "1h", "10h", "100h")],
  ("hubert_base.py", "ctc_base_10h.py"),
  ("w2v_large.py", "ctc_large_10m.py"),
  ("w2v_large.py", "ctc_large_960h.py"),
  ("xlsr_0.3b.py", "ctc_large_960h.py"),
  ("hubert_large.py", "ctc_large_10m.py:hubert"),
  ("hubert_large.py", "ctc_large_960h.py:hubert"),
]


@pytest.mark.parametrize("pretrained, finetuned", SHIPPED_PAIRS)
def test_each_shipped_fine_tuning_config_fits_its_pretrained_model(pretrained, finetuned):
  source = describe.load_config(f"{REPO}/configs/{pretrained}").model
  target = describe.load_config(f"{REPO}/configs/{finetuned}").model
  target.unlock()
  target.vocab_size = 32  # set by the fine-tuning job from the labels' vocabulary
  assert model_types.model_type(target) == "ctc"
  assert model_types.architecture_differences(source, target) == []


def test_hubert_large_needs_the_hubert_fine_tuning_config():
  """wav2vec 2.0 Large's feature encoder has conv biases, HuBERT Large's none."""
  source = describe.load_config(f"{REPO}/configs/hubert_large.py").model
  target = describe.load_config(f"{REPO}/configs/ctc_large_960h.py").model
  assert model_types.architecture_differences(source, target) == [
    "conv_bias: False there, True here"
  ]
  with pytest.raises(ValueError, match="takes no argument or 'hubert', got 'hubrt'"):
    describe.load_config(f"{REPO}/configs/ctc_large_960h.py:hubrt")


def test_main_starts_from_an_sslax_checkpoint(tmp_path, demo_data_dir):
  """The first step of a run from a checkpoint uses exactly the checkpoint's parameters.

  One block and 3 conv layers (tests/tiny_steps.py): the run's programs are its own."""
  model_config = tiny_steps.fewer_layers(demo.get_config("tiny")).model
  source = model_types.init_params(model_config, seed=123)
  source_dir = str(tmp_path / "pretrained")
  checkpoint.save_sslax_checkpoint(source_dir, model_config, source)

  def run_main(workdir, *overrides):
    return subprocess.run(
      [
        sys.executable,
        "-m",
        "sslax.main",
        "--config=configs/demo.py:tiny",
        f"--workdir={workdir}",
        f"--config.data.data_dir={demo_data_dir}",
        f"--config.init_from={source_dir}",
        "--config.total_steps=1",
        "--config.optim.warmup_steps=1",
        *tiny_steps.FEWER_LAYERS_FLAGS,
        *overrides,
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=600,
    )

  # The job checks the source's architecture against its config before loading.
  refused = run_main(str(tmp_path / "pre_ln"), f"--config.model.layer_norm_first={True}")
  assert refused.returncode != 0
  assert "layer_norm_first: False there, True here" in refused.stderr, refused.stderr[-3000:]
  workdir = str(tmp_path / "run")
  result = run_main(workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"initialised from {source_dir}; newly initialised: []" in result.stderr
  # Step 1 has learning rate 0 (warmup starts at 0): the saved parameters are the source's.
  restored = checkpoints.load_params(workdir)
  flat_source = flax.traverse_util.flatten_dict(source, sep="/")
  flat_restored = flax.traverse_util.flatten_dict(restored, sep="/")
  assert flat_source.keys() == flat_restored.keys()
  for path, value in flat_source.items():
    np.testing.assert_array_equal(flat_restored[path], value, err_msg=path)

  # The training workdir exports to transformers' format and reads back unchanged.
  hf_dir = str(tmp_path / "hf")
  subprocess.run(
    [sys.executable, "-m", "sslax.interop.hf", "export", "--from", workdir, "--to", hf_dir],
    cwd=REPO,
    check=True,
    capture_output=True,
  )
  source = init_from.load_source(f"hf:{hf_dir}")
  exported, vocab = source.params, source.vocab
  assert vocab is None  # not a CTC model
  for path, value in flat_source.items():
    np.testing.assert_array_equal(exported[path], value, err_msg=path)


def test_load_source_reads_a_hugging_face_checkpoint(tmp_path):
  model_config = demo.get_config("tiny").model
  params = model_types.init_params(model_config, seed=7)
  hf.export_hf(str(tmp_path), model_config, params)
  source = init_from.load_source(f"hf:{tmp_path}")
  loaded, fresh = source.params, source.fresh
  assert fresh == []
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  assert loaded.keys() == flat.keys()
  for path, value in flat.items():
    np.testing.assert_array_equal(loaded[path], value, err_msg=path)
