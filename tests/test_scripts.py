"""Every script in benchmarks/ and tools/ starts as its docstring says, from the root.

`python benchmarks/NAME.py --help` (the way the docstrings run them) must import what the
script needs and print its usage: its docstring's first line and its flags. absl's --help
exits with status 1, argparse's with 0; a failed import exits 1 with a traceback.
"""

import ast
import glob
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(
  os.path.relpath(path, REPO)
  for folder in ("benchmarks", "tools")
  for path in glob.glob(os.path.join(REPO, folder, "*.py"))
)


def test_every_script_prints_its_usage_from_the_repository_root():
  assert len(SCRIPTS) >= 6, SCRIPTS
  env = dict(os.environ, PYTHONPATH="")  # as a user's shell: only the script's own path
  running = {
    script: subprocess.Popen(
      [sys.executable, script, "--help"],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for script in SCRIPTS
  }
  for script, process in running.items():
    output, _ = process.communicate(timeout=300)
    with open(os.path.join(REPO, script)) as f:
      docstring = ast.get_docstring(ast.parse(f.read()))
    assert docstring, f"{script} has no docstring"
    assert process.returncode in (0, 1) and "Traceback" not in output, f"{script}:\n{output}"
    first_words = " ".join(docstring.split()[:6])  # help formatters rewrap the text
    assert first_words in " ".join(output.split()), f"{script} printed no usage:\n{output}"
    assert "--" in output, f"{script} lists no flags:\n{output}"
