"""Held-out validation during pretraining, and the plateau / collapse warnings."""

import json
import logging
import os

import numpy as np
import pytest
import tiny_steps

from configs import demo
from sslax import loop
from sslax.train import diagnosis


def tiny(demo_data_dir, **overrides):
  """The tiny config with one block and 3 conv layers (tests/tiny_steps.py: compiles faster)."""
  config = tiny_steps.fewer_layers(demo.get_config("tiny"))
  config.data.data_dir = demo_data_dir
  config.total_steps = 4
  config.update_from_flattened_dict(overrides)
  return config


def lines(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_validation_is_logged_and_leaves_training_as_it_was(tmp_path, demo_data_dir):
  validated = str(tmp_path / "validated")
  # Dropout on, so that a validation in training mode would differ from one to the next.
  config = tiny(demo_data_dir, **{"valid.split": "dev", "valid.every": 2, "model.dropout": 0.5})
  loop.train(config, validated)
  plain_config = tiny(demo_data_dir, **{"model.dropout": 0.5})
  loop.train(plain_config, str(tmp_path / "plain_dropout"))

  logged = lines(validated)
  valid = [m for m in logged if "valid" in m]
  train = [m for m in logged if "valid" not in m]
  assert [m["step"] for m in valid] == [2, 4]
  assert [m["step"] for m in train] == [1, 2, 3, 4]
  for m in valid:
    v = m["valid"]
    assert v["split"] == "dev" and 0 <= v["accuracy"] <= 1 and np.isfinite(v["loss"])
    assert v["audio_seconds_per_second"] > 0
  # Validation reads other data and updates nothing: training is bitwise what it was.
  for a, b in zip(train, lines(str(tmp_path / "plain_dropout")), strict=True):
    assert (a["loss"], a["data_position"]) == (b["loss"], b["data_position"])
  events = [name for name in os.listdir(validated) if name.startswith("events.out")]
  assert events


def test_validation_is_deterministic_and_skips_dropout(tmp_path, demo_data_dir):
  config = tiny(demo_data_dir, **{"valid.split": "dev", "valid.every": 1, "model.dropout": 0.5})
  config.optim.learning_rate = 0.0  # the state never changes: validations must agree
  config.optim.warmup_steps = 0
  workdir = str(tmp_path / "run")
  loop.train(config, workdir)
  valid = [m["valid"] for m in lines(workdir) if "valid" in m]
  assert len(valid) == 4
  for v in valid[1:]:
    for name in ("loss", "accuracy", "contrastive_loss", "prob_perplexity"):
      assert v[name] == valid[0][name], name


def test_a_split_with_no_full_batch_is_named(tmp_path, demo_data_dir):
  config = tiny(demo_data_dir, **{"valid.split": "dev[:3]", "valid.every": 2})
  with pytest.raises(
    ValueError, match=r"config.valid.split='dev\[:3\]': .* has 3 examples .*batch_size=8"
  ):
    loop.train(config, str(tmp_path))


def summary(contrastive_loss, codes):
  return {"contrastive_loss": contrastive_loss, "accuracy": 0.05, "code_perplexity": codes}


def test_plateau_and_collapse_are_said_once_after_the_configured_updates(caplog):
  config = demo.get_config()
  config.objective.num_negatives = 100  # chance ln 101 = 4.615 nats
  config.model.latent_vars, config.model.latent_groups = 320, 2
  config.diagnose.after_steps = 100
  watch = diagnosis.Diagnosis(config)
  with caplog.at_level(logging.WARNING):
    watch.check(50, summary(4.615, 1.0))  # too early
    assert not caplog.records
    watch.check(100, summary(4.4, 400.0))  # learning, healthy codebook
    assert not caplog.records
    watch.check(120, summary(4.59, 400.0))
    watch.check(140, summary(4.6, 400.0))
    plateau = [r.getMessage() for r in caplog.records]
    assert len(plateau) == 1 and "loss is 4.590 nats per masked frame, chance is" in plateau[0]
    assert "ln(K + 1) = 4.615" in plateau[0]
    watch.check(160, summary(3.9, 20.0))
    watch.check(180, summary(3.9, 10.0))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and "code perplexity is 20.0 of 640 codewords" in messages[1]
  assert diagnosis.Diagnosis.for_config(demo.get_config()) is not None
