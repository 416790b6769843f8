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
      frontend="waveform",  # 'waveform' (conv_layers) or 'logmel' (log mel + conv2d subsampling)
      mel_bins=80,  # 'logmel': mel bins (25 ms windows, 10 ms hop)
      mel_normalization="utterance",  # 'logmel': per-bin 'utterance' normalisation or 'none'
      mel_subsampling=4,  # 'logmel': time reduction by stride-2 conv2d (4: 40 ms frames)
      mel_conv_channels=256,  # 'logmel': channels of each subsampling conv
      encoder="transformer",  # 'transformer' or 'conformer' (Gulati et al. 2020)
      conformer_position_embeddings="relative",  # 'conformer': 'relative' or 'rotary'
      conformer_conv_kernel=31,  # 'conformer': depthwise conv width (frames, odd)
      conformer_conv_norm="batch_norm",  # 'conformer': 'batch_norm' or 'layer_norm' in conv
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
  # A NaN or Inf loss or gradient: 'stop' the run (naming the step and the last good
  # checkpoint) or 'skip' the update (state unchanged, counted in `skipped_updates`).
  c.nonfinite = "stop"
  c.max_consecutive_skips = 10  # 'skip': this many skipped updates in a row stop the run
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
      read_threads=2,  # host batches read in parallel, each by one thread, ahead of the step
      # Unreadable, empty, truncated, too-short, non-mono or other-rate audio: 'skip' (log
      # each file, count it, fill its rows deterministically) or 'error' (stop naming it).
      bad_audio="skip",
      resample=False,  # resample encoded audio at other rates to 16 kHz (soxr) when read
      # Crop lengths (samples, exact frame counts, largest = max_samples), one static batch
      # shape each; () means every batch is max_samples long (sslax/data/buckets.py).
      buckets=(),
      bucket_batch_multiple=1,  # bucket batches are multiples of it (of data x fsdp x accum)
      mixture=(),  # ((name, split), ...) sources sampled by temperature; () reads name:split
      mixture_alpha=0.5,  # p_i proportional to (usable examples)^alpha (XLS-R: 0.5)
      # Wav2Vec-Aug (sslax/data/augment.py), per utterance before the crop; off in the papers.
      augment=ml_collections.ConfigDict(
        dict(
          speed_prob=0.0,  # chance of a speed change (pitch and tempo)
          speed_factors=(0.9, 1.0, 1.1),  # its factor, drawn uniformly (Kaldi's perturbation)
          gain_prob=0.0,  # chance of a gain
          gain_db=(-6.0, 6.0),  # its range (dB), drawn uniformly
          noise_prob=0.0,  # chance of additive noise
          snr_db=(5.0, 20.0),  # its signal-to-noise ratio range (dB), drawn uniformly
          noise_colours=("white", "pink", "brown"),  # generated noise when no noise_dataset
          noise_dataset="",  # TFDS noise clips (e.g. MUSAN via sslax.data.manifest); '': none
          noise_split="train",  # its split
        )
      ),
    )
  )

  # Span masking (fairseq compute_mask_indices), computed in the input pipeline.
  c.masking = ml_collections.ConfigDict(
    dict(
      mask_prob=0.65,  # expected share of frames that start a span, times mask_length
      mask_length=10,  # span length (frames)
      min_masks=2,  # at least this many spans per utterance
    )
  )

  c.model = wav2vec2_model()

  c.objective = ml_collections.ConfigDict(
    dict(
      name="wav2vec2",  # 'wav2vec2' (contrastive) or 'bestrq' (see bestrq_pretrain_config)
      num_negatives=100,  # K distractors from masked frames of the same utterance
      logit_temp=0.1,  # cosine similarity is divided by this
      diversity_weight=0.1,  # weight of (GV - perplexity) / GV
      feature_penalty_weight=10.0,  # weight of the mean squared conv features
    )
  )

  # Gumbel softmax temperature: max(start * decay**step, end).
  c.gumbel = ml_collections.ConfigDict(dict(start=2.0, end=0.5, decay=0.999995))

  # Held-out validation during pretraining (fairseq's valid subset and
  # validate_interval_updates): the objective, in evaluation mode, on fixed batches of
  # another split of config.data.name, cropped and masked as training is; logged as
  # `valid` lines of metrics.jsonl and valid/ in TensorBoard.
  c.valid = ml_collections.ConfigDict(
    dict(
      split="",  # the held-out split; '' validates never
      every=0,  # updates between validations (and one after the last update); 0: never
      batches=0,  # global batches per validation; 0: as many as the split fills once
    )
  )

  # Warnings, once each, when a contrastive run is not learning (sslax/train/diagnosis.py).
  c.diagnose = ml_collections.ConfigDict(
    dict(
      after_steps=0,  # updates before accuracy near chance is reported; 0: never
      collapse_share=0.05,  # code perplexity below this share of G x V codewords: collapse
    )
  )

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


def kmeans_config() -> ml_collections.ConfigDict:
  """Fields of the k-means job (sslax/units/job.py); values: fairseq HuBERT iteration 1."""
  c = ml_collections.ConfigDict()
  c.job = "kmeans"  # which job sslax.main runs
  c.seed = 0  # seeds the fit sample, k-means++ and the mini-batch order

  # Device mesh for the fit: axis sizes, -1 takes the remaining devices.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

  c.data = ml_collections.ConfigDict(
    dict(
      name="sslax_demo_corpus",  # TFDS dataset name (one 16 kHz Audio feature, ArrayRecord)
      split="train",  # TFDS split expression
      data_dir="",  # TFDS data_dir; '' means the TFDS default (~/tensorflow_datasets)
      key_feature="id",  # the feature that names each example; units are joined on it
      read_threads=4,  # examples read and featurised in parallel
    )
  )

  c.features = ml_collections.ConfigDict(
    dict(
      source="mfcc",  # 'mfcc' (39-dim Kaldi MFCC + deltas, 100 Hz) or 'checkpoint'
      checkpoint="",  # 'checkpoint': an sslax checkpoint dir or hf:HF_DIR
      layer=6,  # 'checkpoint': hidden state index (0 = input to the first Transformer layer)
      normalize=False,  # 'checkpoint': per-utterance zero-mean unit-variance waveform
      batch_size=8,  # 'checkpoint': utterances per forward pass
      pad_multiple=16_000,  # 'checkpoint': batches padded to a multiple of this (samples)
    )
  )

  # The fit sample: utterances drawn at random, then a uniform sample of their frames.
  c.fit = ml_collections.ConfigDict(
    dict(
      utterance_fraction=0.1,  # share of utterances read for the fit (fairseq: 10%)
      max_frames=2_000_000,  # frames kept (all processes together): bounds host memory
    )
  )

  c.kmeans = ml_collections.ConfigDict(
    dict(
      num_clusters=100,  # K (HuBERT: 100 on MFCC, 500 on hidden states)
      method="lloyd",  # 'lloyd' (full passes) or 'minibatch'
      batch_size=10_000,  # points per chunk / mini-batch (fairseq: 10000)
      max_iter=100,  # Lloyd passes or mini-batch epochs (fairseq: 100)
      tol=1e-4,  # Lloyd: stop when a pass improves the inertia by at most this, relative
      max_no_improvement=100,  # mini-batch early stopping, in steps (fairseq: 100)
      init_size=30_000,  # points k-means++ seeds from (scikit-learn: 3 x batch_size)
      num_init=20,  # k-means++ seedings tried; the lowest potential wins (fairseq: 20)
    )
  )

  c.units = ml_collections.ConfigDict(
    dict(
      examples_per_shard=1_000,  # examples per unit shard (consecutive in the split)
    )
  )

  # 'checkpoint' features: cluster the candidate hidden state whose units score the highest
  # PNMI on held-out speech (sslax/units/layer_choice.py); () clusters features.layer.
  c.layer_choice = ml_collections.ConfigDict(
    dict(
      layers=(),  # candidate hidden states, e.g. (0, 1, 2, 3, 4)
      split="dev",  # TFDS split with phone alignments that the fit sample never saw
    )
  )
  return c


# wav2vec2_model() fields that HuBERT lacks: its quantizer, and dropout_features, which
# fairseq's HubertModel applies to features it never uses.
_WAV2VEC2_ONLY_FIELDS = ("dropout_features", "latent_vars", "latent_groups", "latent_dim")


def hubert_model(**overrides) -> ml_collections.ConfigDict:
  """HuBERT Base model fields (fairseq hubert_base_librispeech.yaml), with overrides.

  The yaml's backbone values are wav2vec 2.0 Base's, so they are taken from
  `wav2vec2_model()`; final_dim (256) keeps its meaning: the width of the space where
  frames meet cluster embeddings.
  """
  backbone = {k: v for k, v in wav2vec2_model().items() if k not in _WAV2VEC2_ONLY_FIELDS}
  model = ml_collections.ConfigDict(
    dict(
      **backbone,
      num_classes=(500,),  # clusters per label set (one entry per set; k-means K)
      untie_final_proj=True,  # a final_dim slice of final_proj per label set
    )
  )
  model.update(overrides)
  return model


def hubert_pretrain_config() -> ml_collections.ConfigDict:
  """Fields shared by HuBERT pretraining configs (fairseq hubert_base_librispeech.yaml).

  `pretrain_config()` with HuBERT's model, masking, objective and clipping, its units
  instead of the Gumbel schedule (sslax/train/hubert_step.py, sslax/data/hubert_stream.py).
  """
  c = pretrain_config()
  c.data.batch_size = 192  # 32 GPUs x 1.4M samples = 179 crops of 250k, rounded up
  c.masking.mask_prob = 0.8  # the yaml's mask_prob (wav2vec 2.0: 0.65)
  c.model = hubert_model()
  c.objective = ml_collections.ConfigDict(
    dict(
      name="hubert",  # masked prediction of k-means units (sslax/objectives/hubert.py)
      logit_temp=0.1,  # cosine similarity to each cluster embedding is divided by this
      pred_masked_weight=1.0,  # weight of the masked frames' cross-entropy
      pred_nomask_weight=0.0,  # weight of the unmasked frames' cross-entropy
      feature_penalty_weight=10.0,  # weight of the mean squared conv features
    )
  )
  c.units = ml_collections.ConfigDict(
    dict(
      dir="",  # the k-means job's WORKDIR/units (its manifest must agree on K, label rate)
      label_rate=50,  # units per second: 100 (MFCC, iteration 1) or 50 (model features)
      cache_shards=8,  # decoded unit shards each process keeps in memory (an LRU)
    )
  )
  del c.gumbel, c.diagnose  # no quantizer, no contrastive accuracy
  c.optim.clip_norm = 10.0  # global gradient-norm clipping
  return c


# wav2vec2_model() fields of pretraining only (quantizer, its input dropout, final_proj).
_PRETRAINING_ONLY_FIELDS = (
  "dropout_features",
  "final_dim",
  "latent_vars",
  "latent_groups",
  "latent_dim",
  "num_classes",  # HuBERT's head
  "untie_final_proj",
)


def ctc_model(pretrained: ml_collections.ConfigDict, **overrides) -> ml_collections.ConfigDict:
  """`Wav2Vec2ForCTC` fields: the architecture of a pretraining `config.model` (wav2vec 2.0 or
  HuBERT, without its pretraining head) with fairseq's fine-tuning regularisation
  (Wav2Vec2AsrConfig defaults and the finetuning yamls), then `overrides`.
  """
  model = ml_collections.ConfigDict(
    {k: v for k, v in pretrained.items() if k not in _PRETRAINING_ONLY_FIELDS}
  )
  model.update(
    dict(
      dropout=0.0,  # residual dropout in the Transformer
      attention_dropout=0.0,  # dropout on attention probabilities
      activation_dropout=0.1,  # dropout after the feed-forward activation
      dropout_input=0.0,  # dropout on projected features before masking
      layerdrop=0.1,  # probability of skipping a Transformer layer in training
      feature_grad_mult=0.0,  # 0: the feature encoder is frozen; > 0 it trains (from scratch)
    )
  )
  model.final_dropout = 0.0  # dropout before the CTC head (fairseq final_dropout)
  model.update(overrides)
  return model


def finetune_config() -> ml_collections.ConfigDict:
  """Fields shared by CTC fine-tuning configs (values: fairseq base_10h.yaml on LibriSpeech).

  `pretrain_config()`'s run, mesh and data fields, with whole labelled utterances, channel
  masking, the CTC model and the tri-stage Adam; no contrastive objective or Gumbel schedule.
  """
  c = pretrain_config()
  c.job = "finetune"  # which job sslax.main runs ('evaluate' scores the run's checkpoint)
  c.total_steps = 20_000  # optimizer updates
  c.log_every = 200  # steps between progress lines / TensorBoard points
  c.checkpoint_every = 1_000  # steps between checkpoints (one is also written at the end)
  del c.objective, c.gumbel, c.diagnose

  c.data.name = "librispeech"  # TFDS dataset with an Audio and a transcript feature
  c.data.split = "train_clean100"  # the labelled split (the vocabulary comes from all of it)
  # Global batch (utterances): fairseq's 2 GPUs x 3.2M samples x update_freq 4 hold about
  # 128 LibriSpeech utterances.
  c.data.batch_size = 128
  c.data.max_samples = 560_080  # utterances are padded to this; longer ones are dropped (35 s)
  c.data.min_samples = 0  # shorter utterances are dropped
  c.data.text_key = "text"  # the transcript feature
  c.data.id_key = "id"  # the feature naming each utterance (evaluation output)
  c.data.max_label_length = 640  # labels padded to this; utterances with more characters dropped
  c.data.labelled_minutes = 0.0  # seeded random subset of the split with this much audio; 0: all
  c.data.subset_seed = 0  # seeds that subset (independent of `seed`, so arms share it)

  # Time masks (fairseq apply_mask: same spans as pretraining) and channel masks.
  c.masking.mask_prob = 0.65  # expected share of frames that start a span, times mask_length
  c.masking.mask_channel_prob = 0.5  # the same for channels of the Transformer input
  c.masking.mask_channel_length = 64  # channel span length

  c.model = ctc_model(wav2vec2_model(), layerdrop=0.05)

  c.optim = ml_collections.ConfigDict(
    dict(
      learning_rate=5e-5,  # peak learning rate
      phase_ratios=(0.1, 0.4, 0.5),  # tri-stage: warmup, hold, exponential decay
      init_lr_scale=0.01,  # the warmup starts at learning_rate times this
      final_lr_scale=0.05,  # the decay ends at learning_rate times this
      freeze_finetune_updates=10_000,  # only lm_head trains for this many updates
      b1=0.9,  # Adam beta1
      b2=0.98,  # Adam beta2
      eps=1e-8,  # Adam epsilon
      weight_decay=0.0,  # decoupled weight decay (fairseq's adam default)
      clip_norm=0.0,  # global gradient-norm clipping; 0 disables (fairseq's default)
    )
  )

  # Validation (fairseq's valid_subset, best_checkpoint_metric wer): greedy decoding of the
  # whole split, WER and CER logged as `valid` lines; the best state by (WER, CER) is kept
  # in workdir/checkpoints_best (best_metric 'cer': by (CER, WER), sslax/train/best.py).
  # `batches` must stay 0 (take part of a split as 'dev[:64]').
  c.valid.update(split="dev_other", every=1_000, best_metric="wer")

  # The evaluate job (and evaluation from scripts): greedy CTC decoding, WER and CER.
  c.eval = ml_collections.ConfigDict(
    dict(
      split="dev_other",  # split scored by --config.job=evaluate
      batch_size=16,  # global batch (validation's too); utterances padded to the longest
      # 'best' (by validation WER; the latest for a run that never validates) or 'latest'.
      checkpoint="best",
    )
  )
  return c


# wav2vec2_model() fields BEST-RQ lacks: the Gumbel quantizer, its input dropout and
# final_proj (its targets come from the frozen random-projection quantizer).
_BESTRQ_DROPPED_FIELDS = (
  "dropout_features",
  "final_dim",
  "latent_vars",
  "latent_groups",
  "latent_dim",
)


def bestrq_model(**overrides) -> ml_collections.ConfigDict:
  """BEST-RQ model fields (Chiu et al. 2022): the backbone fields of `wav2vec2_model()`,
  log-mel + conformer, and the random-projection quantizer's, with overrides.
  """
  backbone = {k: v for k, v in wav2vec2_model().items() if k not in _BESTRQ_DROPPED_FIELDS}
  backbone.update(frontend="logmel", encoder="conformer")  # the paper's pairing
  model = ml_collections.ConfigDict(
    dict(
      **backbone,
      num_codebooks=16,  # G: independent random-projection quantizers (paper: 16)
      codebook_size=8192,  # V: codewords per codebook (paper: 8192)
      codebook_dim=16,  # projection / codeword dimension (paper: 16)
      target_stack=4,  # 10 ms log-mel frames stacked per target (4: the 40 ms frames)
      quantizer_seed=0,  # seeds the frozen projections and codebooks
    )
  )
  model.update(overrides)
  return model


def bestrq_pretrain_config() -> ml_collections.ConfigDict:
  """Fields shared by BEST-RQ pretraining configs: `pretrain_config()` with BEST-RQ's model,
  masking and objective; no Gumbel schedule.
  """
  c = pretrain_config()
  # The paper masks 400 ms spans starting at each 10 ms frame with p = 0.01: at 40 ms
  # frames, p = 0.04 per frame and 10-frame spans, i.e. mask_prob = 0.04 x 10.
  c.masking.mask_prob = 0.4  # expected share of frames that start a span, times mask_length
  c.masking.mask_length = 10  # span length (frames of 40 ms: 400 ms)
  c.model = bestrq_model()
  c.objective = ml_collections.ConfigDict(
    dict(
      name="bestrq",  # masked prediction of the frozen quantizer's codeword indices
    )
  )
  del c.gumbel, c.diagnose  # no Gumbel quantizer, no contrastive accuracy
  return c
