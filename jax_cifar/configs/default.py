"""Every configuration key of jax-cifar, with its default; other configs import this and override."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # Seeds parameter init, data order, augmentation and mixup keys.

  c.data = ml_collections.ConfigDict()
  c.data.source = 'local'  # 'local' (cifar-100-python folder/tarball), 'tfds' or 'synthetic'.
  c.data.dir = ''  # Folder holding cifar-100-python/ or its tarball; '' -> $JAX_CIFAR_DATA_DIR, then the cache.
  c.data.download = True  # Download the official archive (md5-checked) when it is absent and we are online.
  c.data.tfds_data_dir = ''  # tfds data_dir for source='tfds' ('' = tfds default; a gs:// path works on TPU).
  c.data.val_fraction = 0.1  # Stratified share of the 50k training images held out for validation; 0 trains on all.
  c.data.split_seed = 0  # Seed of the stratified train/val split (and of synthetic data); not `seed`.
  c.data.train_limit = 0  # Use only the first N (class-balanced) training images; 0 = all. For quick runs.
  c.data.eval_limit = 0  # Evaluate on only N (class-balanced) validation/test images; 0 = all.
  c.data.synthetic_size = 1024  # Images per split for source='synthetic'.
  c.data.worker_count = 0  # grain worker processes, 0-256 (0 = in the main process; gathering uint8 is cheap).
  c.data.prefetch = 2  # Batches prefetched to the devices ahead of the train step.

  c.model = ml_collections.ConfigDict()
  c.model.name = 'resnet18'  # 'simple_cnn', 'resnet18'..'resnet152', 'resnext50_32x4d', 'resnext101_32x8d', 'resnext101_64x4d', 'wide_resnet50_2', 'wide_resnet101_2'.
  c.model.num_classes = 100  # Output classes of the (new) head.
  c.model.stem = 'cifar'  # 'imagenet' (7x7/2 conv + max-pool, as torchvision) or 'cifar' (3x3/1 conv, no pool).
  c.model.width = 64  # Channels of the first stage (64 = torchvision); smaller values give fast CPU models.
  c.model.dtype = 'float32'  # Compute dtype of convolutions: 'float32' or 'bfloat16' (params/BN stats stay float32).
  c.model.remat = False  # Recompute each residual block in the backward pass (nnx.remat): less memory, ~30% more compute.
  c.model.scan_blocks = False  # Run each stage's repeated residual blocks as one jax.lax.scan (compiled once; same weights and layout). For GPU/TPU compile time: XLA:CPU runs its backward pass ~10x slower.
  c.model.image_size = 32  # Images are resized on device to this size before the model (e.g. 224 for ImageNet nets).
  c.model.pretrained = ''  # Path of a converted torchvision checkpoint (python -m jax_cifar.convert); '' = random init.
  c.model.init_from = ''  # Start from another run's weights: 'WORKDIR[:best|latest|STEP]' (params + BN statistics; fresh optimizer, step 0).
  c.model.init_from_weights = 'raw'  # With init_from: that checkpoint's 'raw' weights, their 'ema', or 'auto' (the better of the two on validation at that step).
  c.model.normalize = 'cifar'  # Input normalisation statistics: 'cifar', 'imagenet' (use with pretrained weights) or 'none'.

  c.augment = ml_collections.ConfigDict()
  c.augment.crop_padding = 4  # Random crop after padding by this many pixels; 0 disables.
  c.augment.crop_mode = 'constant'  # Padding of the random crop: 'constant' (zeros) or 'reflect'.
  c.augment.flip = True  # Random horizontal flip with probability 0.5.
  c.augment.policy = 'none'  # 'none', 'autoaugment_cifar10', 'randaugment' or 'trivialaugment'.
  c.augment.randaugment_num_ops = 2  # RandAugment: ops applied per image.
  c.augment.randaugment_magnitude = 9  # RandAugment: magnitude bin out of 31.
  c.augment.erasing_prob = 0.0  # Random erasing (Cutout-like) probability per image; 0 disables.
  c.augment.mixup_alpha = 0.0  # Mixup Beta(alpha, alpha) parameter; 0 disables mixup.
  c.augment.cutmix_alpha = 0.0  # CutMix Beta(alpha, alpha) parameter; 0 disables CutMix.
  c.augment.switch_prob = 0.5  # When both mixup and CutMix are on: probability of CutMix for a batch.
  # Robustness augmentations (generic; never jax_cifar.corrupt's held-out corruptions). Order per
  # image: crop/flip -> random-resized-crop -> policy -> AugMix -> colour jitter -> blur -> JPEG ->
  # noise -> erasing. Each *_prob is the per-image probability; 0 disables.
  c.augment.augmix = False  # AugMix (torchvision transforms.v2.AugMix semantics) on every training image.
  c.augment.augmix_severity = 3  # AugMix: severity of the base ops (1-10).
  c.augment.augmix_width = 3  # AugMix: number of augmentation chains mixed.
  c.augment.augmix_depth = -1  # AugMix: ops per chain; -1 = random in [1, 3].
  c.augment.augmix_alpha = 1.0  # AugMix: Dirichlet/Beta concentration of the mixing weights.
  c.augment.augmix_jsd_weight = 0.0  # Jensen-Shannon consistency loss weight (clean + 2 AugMix views per image; 12 in the paper); 0 disables.
  c.augment.rrc_prob = 0.0  # RandomResizedCrop (torchvision semantics, back to the input size) probability.
  c.augment.rrc_scale = (0.35, 1.0)  # RandomResizedCrop: range of the crop's area fraction.
  c.augment.rrc_ratio = (0.75, 1.3333333)  # RandomResizedCrop: range of the crop's aspect ratio.
  c.augment.color_jitter_prob = 0.0  # ColorJitter probability (torchvision semantics, random op order).
  c.augment.color_jitter = (0.4, 0.4, 0.4, 0.1)  # ColorJitter strengths: brightness, contrast, saturation, hue.
  c.augment.blur_prob = 0.0  # GaussianBlur probability (torchvision semantics).
  c.augment.blur_kernel = 3  # GaussianBlur kernel size (odd).
  c.augment.blur_sigma = (0.1, 2.0)  # GaussianBlur: range of sigma.
  c.augment.jpeg_prob = 0.0  # JPEG-like compression (8x8 DCT quantisation of YCbCr) probability.
  c.augment.jpeg_quality = (20, 95)  # JPEG-like compression: range of the quality factor.
  c.augment.jpeg_subsampling = '4:4:4'  # JPEG-like compression's chroma: '4:4:4' (full resolution) or '4:2:0' (2x2, what PIL and CIFAR-100-C's JPEG files use).
  c.augment.noise_prob = 0.0  # Additive Gaussian noise probability.
  c.augment.noise_std = (0.0, 0.1)  # Additive Gaussian noise: range of its std (pixels scaled to [0, 1]).

  c.optim = ml_collections.ConfigDict()
  c.optim.name = 'adamw'  # 'adamw' or 'sgd' (momentum, nesterov).
  c.optim.lr = 1e-3  # Peak learning rate (for the global batch `train.batch_size`).
  c.optim.momentum = 0.9  # SGD momentum.
  c.optim.nesterov = False  # SGD Nesterov momentum.
  c.optim.b1 = 0.9  # AdamW beta1.
  c.optim.b2 = 0.999  # AdamW beta2.
  c.optim.weight_decay = 1e-4  # AdamW: decoupled weight decay (times the learning rate, as torch.optim.AdamW); SGD: coupled (added to the gradient, as torch.optim.SGD).
  c.optim.decay_bn_and_bias = False  # False: weight decay on conv/dense kernels only; True: on BatchNorm scales/biases and dense biases too, as torch.optim's weight_decay (every parameter).
  c.optim.schedule = 'cosine'  # 'cosine' (warmup + cosine decay to end_lr_factor*lr) or 'constant' (after warmup).
  c.optim.schedule_per = 'step'  # 'step': the rate changes at every optimizer step; 'epoch': once per epoch, each epoch at its first step's rate (a torch script's scheduler.step() per epoch; needs warmup_epochs=0; a frozen backbone's epochs count from its unfreezing).
  c.optim.warmup_epochs = 1.0  # Linear warmup length in epochs (fractions allowed); 0 disables.
  c.optim.end_lr_factor = 0.0  # Final learning rate as a fraction of the peak.
  c.optim.grad_clip_norm = 1.0  # Global-norm gradient clipping threshold; 0 disables.
  c.optim.label_smoothing = 0.0  # Label smoothing epsilon for the cross-entropy loss.
  c.optim.backbone_lr_mult = 1.0  # Learning-rate multiplier of every parameter except the head (transfer learning).
  c.optim.freeze_backbone_steps = 0  # Keep the backbone fixed for the first K steps (only the head trains): a zero learning rate, so its gradients still count in clipping and AdamW's moments (docs/transfer.md).

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 128  # Global batch size (summed over all devices and processes).
  c.train.grad_accum_steps = 1  # Split each step's batch into N micro-batches (gradients averaged; BatchNorm per micro-batch): same recipe, 1/N of the activation memory.
  c.train.num_epochs = 30.0  # Training length in epochs (fractions allowed).
  c.train.eval_batch_size = 500  # Global batch size of evaluation (rounded up to a multiple of the device count).
  c.train.log_every_steps = 50  # Training metrics to metrics.jsonl / wandb every N steps.
  c.train.eval_every_epochs = 1.0  # Validation every N epochs (and always at the end).
  c.train.resume = True  # Resume from the latest checkpoint in the workdir; False refuses a workdir that holds a run.
  c.train.allow_config_change = False  # Resume even if keys that alter the run's trajectory changed (logged in launches.jsonl).
  c.train.on_nonfinite = 'stop'  # Non-finite loss: 'stop' (error naming the step) or 'skip' (drop the update, count it).
  c.train.max_steps = 0  # Stop after this many steps even if epochs remain; 0 = no limit (for tests and smoke runs).

  c.ema = ml_collections.ConfigDict()
  # Exponential moving average of the weights AND the BatchNorm running statistics (as timm's
  # ModelEmaV3 with buffers), kept in the train state, checkpointed and validated next to the raw
  # weights (val_accuracy_ema).
  c.ema.decay = 0.0  # EMA decay per step, e.g. 0.999; 0 disables the EMA.
  c.ema.warmup_power = 0.0  # Warm-up: decay_t = min(decay, 1 - (1 + t) ** -power) (timm: 2/3 or 3/4); 0 = none. Either way the first update copies the weights (timm).

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 1000  # Save the 'latest' checkpoint every N steps and at the end ('best' is saved when validation improves).
  c.checkpoint.keep = 2  # How many 'latest' checkpoints to keep (the best one is kept separately).
  c.checkpoint.best_weights = 'raw'  # Which weights' val accuracy picks 'best': 'raw' or 'ema' (needs ema.decay > 0).

  c.wandb = ml_collections.ConfigDict()
  c.wandb.mode = 'disabled'  # 'online', 'offline' (no network needed; `wandb sync WORKDIR/wandb` later) or 'disabled'.
  c.wandb.project = 'jax-cifar'  # wandb project name.
  c.wandb.entity = ''  # wandb entity (team/user); '' = wandb's default.
  c.wandb.name = ''  # Run name; '' = the workdir's name.
  c.wandb.tags = ()  # Run tags.
  return c
