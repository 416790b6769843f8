"""Smaller still than the `tiny` demo configs, for tests whose programs are their own.

A test that compiles programs no other test shares (another mesh, process topology,
schedule or objective setting; the suite's persistent compilation cache shares the rest)
pays for every layer, and so does each process of a multi-process or SIGKILL test, which
traces and loads them again. Compiling a train step grows with the number of layers;
running one with gradient accumulation (a scan, whose body XLA runs without its fast
convolutions at optimisation level 0) grows with the conv channels. One Transformer
block and a 3-layer, 16-channel feature encoder with the same 320x downsampling (so the
same frame counts and masks) compile about a third faster than configs/demo.py:tiny's 2
blocks and 7 layers of 32 channels, and an accumulated step runs about 3x faster. Every
kind of layer, dropout and sharded parameter is still there.
"""

import ml_collections

# (channels, kernel, stride): 5 x 8 x 8 = 320 samples per frame, 50 frames in 16,080.
CONV_3 = ((16, 10, 5), (16, 8, 8), (16, 8, 8))
NUM_LAYERS = 1


def fewer_layers(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` (a tiny wav2vec 2.0 / conformer config) with one encoder block and, for the
  waveform frontend, `CONV_3`; changed in place and returned."""
  with config.unlocked():
    config.model.num_layers = NUM_LAYERS
    if config.model.frontend == "waveform":
      config.model.conv_layers = CONV_3
  return config


# `fewer_layers` of a tiny waveform config, as config overrides and as `python -m
# sslax.main` flags.
FEWER_LAYERS = {"model.num_layers": NUM_LAYERS, "model.conv_layers": CONV_3}
FEWER_LAYERS_FLAGS = tuple(f"--config.{name}={value}" for name, value in FEWER_LAYERS.items())
