"""The bottom layer: what every job shares, importing nothing else of sslax.

`sharding` (the device mesh and the logical-axis rules), `state` (the train state a
checkpoint holds), `checkpoints` (orbax checkpoints of that state), `workdirs` (the
workdir's config.json) and `text` (transcript normalisation and the CTC vocabulary that
checkpoints and workdirs store as vocab.json).

The layers of sslax, top to bottom; a module imports only from its own layer's package
or from layers below it:

  main                    the entry point, `python -m sslax.main`
  jobs                    loop (pretrain, finetune) with init_from, evaluate, extract,
                          describe, units (kmeans and its quality analysis), analysis
                          (layer-wise CCA and probes)
  train | interop         the train steps, optimizer and metrics | Hugging Face
                          transformers import and export; neither imports the other
  data                    input pipelines, dataset builds, HuBERT's unit labels
  objectives              the losses (data fills targets in their conventions)
  registry                the model registry (`model_types`) and the sslax checkpoint
                          directory (`checkpoint`)
  models | features | clustering
                          Flax models | MFCC features | k-means on the mesh
  core                    this package

The `[tool.importlinter]` contracts in pyproject.toml state these layers, that nothing
below interop imports it, and that no package's modules import each other in a cycle;
`lint-imports` (run by .ci/run) checks them.
"""
