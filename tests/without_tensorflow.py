"""Runs a module as a machine without TensorFlow would: `python tests/without_tensorflow.py
MODULE ARGS...` (as `python -m MODULE ARGS...`), with `import tensorflow` failing and
`importlib.util.find_spec('tensorflow')` finding nothing, as when it is not installed."""

import importlib.abc
import importlib.util
import os
import runpy
import sys


def _is_tensorflow(name: str) -> bool:
  return name == "tensorflow" or name.startswith("tensorflow.")


class _NotInstalled(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    if _is_tensorflow(name):
      raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    return None


_find_spec = importlib.util.find_spec


def _find_spec_without_tensorflow(name, package=None):
  return None if _is_tensorflow(name) else _find_spec(name, package)


if __name__ == "__main__":
  sys.meta_path.insert(0, _NotInstalled())
  importlib.util.find_spec = _find_spec_without_tensorflow
  module, sys.argv = sys.argv[1], sys.argv[1:]
  sys.path[0] = os.getcwd()  # as `python -m` has it
  runpy.run_module(module, run_name="__main__", alter_sys=True)
