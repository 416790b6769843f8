"""tools/plot_runs.py reads a run's metrics.jsonl, also while the run is writing it."""

import importlib.util
import json
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_plot_runs():
  spec = importlib.util.spec_from_file_location("plot_runs", f"{REPO}/tools/plot_runs.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_read_metrics_keeps_resumed_steps_last_lines_and_skips_a_line_being_written(tmp_path):
  lines = [
    {"step": 1, "accuracy": 0.1},
    {"step": 2, "accuracy": 0.2},
    {"step": 2, "valid": {"split": "dev", "accuracy": 0.15}},
    {"step": 2, "accuracy": 0.25},  # a resumed run's repeat of step 2
    {"step": 3, "accuracy": 0.3},
  ]
  with open(tmp_path / "metrics.jsonl", "w") as f:
    f.writelines(json.dumps(line) + "\n" for line in lines)
    f.write('{"step": 4, "accur')  # the running job's next line, half written
  train, valid = load_plot_runs().read_metrics(str(tmp_path))
  assert [(r["step"], r["accuracy"]) for r in train] == [(1, 0.1), (2, 0.25), (3, 0.3)]
  assert valid == [{"split": "dev", "accuracy": 0.15, "step": 2}]
