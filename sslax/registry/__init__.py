"""The layer just above the models: the model registry (`model_types`: every model a
checkpoint can hold, by type) and the sslax checkpoint directory (`checkpoint`) that
needs it. Jobs build, shape and load models through it without the transformers adapter
(sslax/interop/), which sits above it."""
