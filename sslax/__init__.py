"""sslax: self-supervised speech pretraining in JAX/Flax.

The modules directly under sslax/ are the jobs and their entry point (`main`); the
packages are the layers beneath them, listed top to bottom in sslax/core/__init__.py.
"""

import os

__version__ = "0.1.0"

# TensorFlow's C++ INFO lines (the oneDNN and CPU-instruction notices) tell a user of sslax's
# commands nothing; they are dropped unless the user asks for them. Set before anything
# imports TensorFlow (`sslax.core.chatter` filters the Python libraries' lines).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
