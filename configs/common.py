"""Shared defaults for every sslax config.

Each config file calls `pretrain_config()` and overrides what differs. Every field is
written out here with a one-line comment; library code reads fields directly and never
falls back on defaults of its own.
"""

import ml_collections

# fairseq's conv feature extractor: [(dim, kernel, stride)]; 320x downsampling, 20 ms frames.
WAV2VEC2_CONV_LAYERS = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2


def wav2vec2_model(**overrides) -> ml_collections.ConfigDict:
  """wav2vec 2.0 Base model fields (fairseq `Wav2Vec2Config` defaults), with overrides."""
  model = ml_collections.ConfigDict(
    dict(
      conv_layers=WAV2VEC2_CONV_LAYERS,  # (channels, kernel, stride) per conv layer
      extractor_mode="group_norm",  # 'group_norm' (first conv only) or 'layer_norm' (every conv)
      conv_bias=False,  # bias in the conv layers
      embed_dim=768,  # Transformer width
      num_layers=12,  # Transformer layers
      num_heads=12,  # attention heads
      mlp_dim=3072,  # feed-forward width
      layer_norm_first=False,  # pre-LN (True, Large) or post-LN (False, Base)
      pos_conv_kernel=128,  # convolutional positional embedding kernel (frames)
      pos_conv_groups=16,  # its groups
      dropout=0.1,  # residual dropout in the Transformer
      attention_dropout=0.1,  # dropout on attention probabilities
      activation_dropout=0.0,  # dropout after the feed-forward activation
      dropout_input=0.1,  # dropout on projected features before masking
      dropout_features=0.1,  # dropout on conv features used as quantizer input
      layerdrop=0.05,  # probability of skipping a Transformer layer in training
      feature_grad_mult=0.1,  # gradient scale into the conv feature extractor
      final_dim=256,  # dimension of the contrastive space
      latent_vars=320,  # V: codewords per codebook group
      latent_groups=2,  # G: codebook groups
      latent_dim=0,  # codevector dim (all groups); 0 means final_dim
    )
  )
  model.update(overrides)
  return model


def pretrain_config() -> ml_collections.ConfigDict:
  """Fields shared by all wav2vec 2.0 pretraining configs (values: fairseq Base)."""
  c = ml_collections.ConfigDict()
  c.job = "pretrain"  # which job sslax.main runs
  c.seed = 0  # seeds parameters, masks, dropout, Gumbel noise, negatives and data order
  c.total_steps = 400_000  # optimizer updates
  c.log_every = 200  # steps between progress lines / TensorBoard points
  c.checkpoint_every = 25_000  # steps between checkpoints (one is also written at the end)
  c.keep_checkpoints = 2  # checkpoints kept in workdir/checkpoints
  c.compute_dtype = "bfloat16"  # activation dtype; parameters and optimizer state stay float32
  c.grad_accum_steps = 1  # microbatches per update (the global batch is split into them)
  # Pretrained parameters for a fresh run: '' (none), 'hf:HF_DIR' or an sslax checkpoint dir.
  c.init_from = ""

  # Device mesh: axis sizes over all devices, -1 takes the remaining devices; dcn_data is
  # how many slices (TPU multi-slice) or nodes (GPU, one process each) `data` spans.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, dcn_data=1))

  c.data = ml_collections.ConfigDict(
    dict(
      name="sslax_demo_corpus",  # TFDS dataset name
      split="train",  # TFDS split expression
      data_dir="",  # TFDS data_dir; '' means the TFDS default (~/tensorflow_datasets)
      batch_size=384,  # global batch (utterances per update, all hosts together)
      max_samples=250_000,  # crop length; padded batches have exactly this many samples
      min_samples=32_000,  # shorter utterances are dropped
      normalize=False,  # per-utterance zero mean, unit variance (fairseq task.normalize)
      prefetch=2,  # batches prepared ahead of the train step
    )
  )

  # Span masking (fairseq compute_mask_indices), computed in the input pipeline.
  c.masking = ml_collections.ConfigDict(
    dict(
      mask_prob=0.65,  # expected share of frames that start a span, times mask_length
      mask_length=10,  # span length (frames)
      min_masks=2,  # at least this many spans per utterance
      require_same_masks=True,  # equalise masked-frame counts within a batch, as fairseq
    )
  )

  c.model = wav2vec2_model()

  c.objective = ml_collections.ConfigDict(
    dict(
      num_negatives=100,  # K distractors from masked frames of the same utterance
      logit_temp=0.1,  # cosine similarity is divided by this
      diversity_weight=0.1,  # weight of (GV - perplexity) / GV
      feature_penalty_weight=10.0,  # weight of the mean squared conv features
    )
  )

  # Gumbel softmax temperature: max(start * decay**step, end).
  c.gumbel = ml_collections.ConfigDict(dict(start=2.0, end=0.5, decay=0.999995))

  c.optim = ml_collections.ConfigDict(
    dict(
      learning_rate=5e-4,  # peak learning rate
      warmup_steps=32_000,  # linear warmup, then linear (polynomial power 1) decay to 0
      b1=0.9,  # Adam beta1
      b2=0.98,  # Adam beta2
      eps=1e-6,  # Adam epsilon
      weight_decay=0.01,  # decoupled weight decay (fairseq's Adam)
      clip_norm=0.0,  # global gradient-norm clipping; 0 disables
    )
  )
  return c
