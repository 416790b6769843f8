"""notebooks/quickstart.ipynb: committed without outputs, and run end to end (tiny setting)."""

import os

import nbformat
import papermill
import pytest
import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "quickstart.ipynb")


def test_committed_without_outputs():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(notebook)
  for index, cell in enumerate(notebook.cells):
    if cell.cell_type == "code":
      assert not cell.outputs and cell.execution_count is None, (
        f"cell {index} of {NOTEBOOK} holds outputs: clear them before committing "
        "(jupyter nbconvert --clear-output --inplace)"
      )
  tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
  assert len(tagged) == 1, "papermill needs exactly one cell tagged 'parameters'"


@pytest.mark.slow
def test_runs_end_to_end_on_the_tiny_setting(tmp_path, monkeypatch):
  # The kernel and its jobs see one device, as in a user's runtime (not the suite's eight).
  monkeypatch.setenv("XLA_FLAGS", xla_flags.FAST_COMPILE)
  out = str(tmp_path / "executed.ipynb")
  workdir = str(tmp_path / "work")
  papermill.execute_notebook(
    NOTEBOOK,
    out,
    parameters=dict(
      SETTING="tiny", PRETRAIN_STEPS=8, CTC_STEPS=8, ANALYSIS_UTTERANCES=16, WORKDIR=workdir
    ),
    cwd=os.path.join(REPO, "notebooks"),  # the notebook finds the repository root itself
    kernel_name="python3",
    progress_bar=False,
  )
  executed = nbformat.read(out, as_version=4)
  text = "".join(
    output.get("text", "") for cell in executed.cells for output in cell.get("outputs", [])
  )
  assert "hidden state 0: (" in text, text
  assert "test CER " in text, text
  assert os.path.exists(os.path.join(workdir, "curves.png"))
  assert os.path.exists(os.path.join(workdir, "layers", "layers.png"))
  assert os.path.exists(os.path.join(workdir, "ctc", "eval_test.json"))
