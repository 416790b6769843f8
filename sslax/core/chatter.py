"""Library chatter kept out of sslax's command-line logs: lines that tell a user nothing.

`install()` (each command's `main`) filters absl's handler, through which JAX, orbax and
sslax log:
* orbax's INFO lines (several per checkpoint save and restore);
* JAX's INFO line for each accelerator backend it probes and does not find ("Unable to
  initialize backend 'tpu'" on every machine without a TPU);
* orbax's warning "Metadata file does not exist" on restoring a checkpoint without its
  optional metadata file (sslax reads its own config.json and checkpoint layout instead).
Warnings and errors from elsewhere, and every sslax line, still show. TensorFlow's C++
start-up lines (the oneDNN notice, the CPU instruction notice) are INFO lines that
`TF_CPP_MIN_LOG_LEVEL=1` drops; sslax's package init sets it unless the user has.
"""

import logging

from absl import logging as absl_logging

_BACKEND_PROBE = "/jax/_src/xla_bridge.py"


def is_chatter(record: logging.LogRecord) -> bool:
  """Whether a log record is one of the lines listed in the module docstring."""
  path = record.pathname.replace("\\", "/")
  if "/orbax/" in path:
    return record.levelno < logging.WARNING or str(record.msg).startswith(
      "Metadata file does not exist"
    )
  return record.levelno < logging.WARNING and path.endswith(_BACKEND_PROBE)


def _keep(record: logging.LogRecord) -> bool:
  return not is_chatter(record)


def install() -> None:
  """Filters the chatter out of absl's handler (once, however often it is called)."""
  handler = absl_logging.get_absl_handler()
  if _keep not in handler.filters:
    handler.addFilter(_keep)
