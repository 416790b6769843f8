"""The k-means job's layer choice (sslax/units/layer_choice.py): the layer it clusters is
the one whose own k-means job scores the highest held-out PNMI, and the choice is kept."""

import json
import os

import numpy as np
import pytest
import tiny_kmeans

from configs import demo
from sslax.registry import checkpoint, model_types
from sslax.units import job, layer_choice, quality

HELD_OUT = "dev[4:12]"


def config_for(path: str, data_dir: str):
  config = tiny_kmeans.checkpoint_config(path, data_dir)
  config.layer_choice.split = HELD_OUT
  return config


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory) -> str:
  model_config = demo.get_config("tiny").model  # 2 Transformer layers: hidden states 0-2
  path = str(tmp_path_factory.mktemp("choice") / "ckpt")
  checkpoint.save_sslax_checkpoint(path, model_config, model_types.init_params(model_config, 0))
  return path


def test_chooses_the_layer_whose_own_units_score_highest(
  tmp_path, random_checkpoint, demo_data_dir, monkeypatch
):
  # Each layer's units from an ordinary k-means run, scored on the held-out split.
  expected = {}
  for layer in (0, 1, 2):
    config = config_for(random_checkpoint, demo_data_dir)
    config.features.layer = layer
    workdir = str(tmp_path / f"layer{layer}")
    job.run(config, workdir)
    expected[layer] = quality.score_units_dir(
      os.path.join(workdir, "units"),
      split=HELD_OUT,
      data_dir=demo_data_dir,
      batch_size=4,
      pad_multiple=160_000,
    )["pnmi"]
  assert len(set(expected.values())) == 3, expected  # a choice to make

  config = config_for(random_checkpoint, demo_data_dir)
  config.features.layer = 6  # ignored: the choice sets it
  config.layer_choice.layers = (0, 1, 2)
  workdir = str(tmp_path / "choose")
  chosen = layer_choice.resolve(config, workdir)
  best = max(expected, key=expected.get)
  assert chosen.features.layer == best
  with open(os.path.join(workdir, "units", layer_choice.CHOICE_FILE)) as f:
    record = json.load(f)
  assert record["layer"] == best
  got = {row["layer"]: row["pnmi"] for row in record["scores"]}
  np.testing.assert_allclose([got[k] for k in expected], list(expected.values()), rtol=1e-6)

  # A rerun reuses the recorded choice without fitting again; other settings are refused.
  def no_fit(*args, **kwargs):
    raise AssertionError("fitted again")

  monkeypatch.setattr(job, "fit", no_fit)
  assert layer_choice.resolve(config, workdir).features.layer == best
  config.layer_choice.layers = (1, 2)
  with pytest.raises(ValueError, match=r"layer_choice.json chose a layer for other settings"):
    layer_choice.resolve(config, workdir)


def test_ties_go_to_the_lower_layer_and_bad_requests_are_named(demo_data_dir, tmp_path):
  rows = [dict(layer=3, pnmi=0.5), dict(layer=1, pnmi=0.5), dict(layer=2, pnmi=0.4)]
  assert layer_choice.best_layer(rows) == 1
  config = config_for("", demo_data_dir)
  config.features.source = "mfcc"
  config.layer_choice.layers = (0, 1)
  with pytest.raises(ValueError, match=r"layer_choice.layers=\(0, 1\) needs checkpoint features"):
    layer_choice.resolve(config, str(tmp_path))
  config.layer_choice.layers = ()
  assert layer_choice.resolve(config, str(tmp_path)) is config
