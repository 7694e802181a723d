"""The base config every ``configs/*.py`` file starts from: every key, with its default.

Key names follow the Flax examples where one exists (``batch_size``, ``num_epochs``,
``num_train_steps``, ``learning_rate``, ``checkpoint_every_steps``, ``seed``, ``half_precision``).
Config files change values; a key that is not here is an error (ConfigDicts are locked).
"""

from __future__ import annotations

import ml_collections

from lungjax import trees

# The values of the two keys that choose training code. Here, not with that code (training.optim,
# whose tables have exactly these keys), so that validating a config imports no training code: every
# mode validates the whole config before any work, and evaluation must not load training.
OPTIMIZERS = ("adam", "adamw", "sgd", "lamb", "lars")
SCHEDULES = ("constant", "cosine", "plateau")


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    config.data = ml_collections.ConfigDict()
    # "phantom" (embedded, generated) | "nih" | "chexpert" | "mimic" | "padchest" | "vindr" | "hospital" (your download)
    config.data.source = "phantom"
    # A union: ((source, weight), ...), each source drawn in proportion to its weight; empty: data.source alone.
    # An entry (source, weight, manual_dir) reads that part from its own folder (or "phantom[:site]"), so two
    # hospitals are two parts; a part is named source, or source-<site>, source-phantom, source-<folder's name>
    config.data.sources = ()
    # "six_class" (the reference's single-label subset) | "full14" (every image, NIH's 14 findings, multi-label)
    config.data.task = "six_class"
    # A label set of the harmonised vocabulary (masked multi-label; lungjax.data.sources.labelspace): a named
    # set as one element (("chexpert5",), or --config.data.labels=chexpert5) or harmonised names; empty: the
    # classes of data.task
    config.data.labels = ()
    # uncertain entries of a label set: "ignore" (masked) | "zeros" | "ones" | "irvin2019" (CheXpert's best per finding)
    config.data.uncertainty = "ignore"
    config.data.views = "both"  # full14 only: "both" | "PA" | "AP"
    # The download's folder, for every source but "phantom"; for a built source (not "nih") "phantom" or
    # "phantom:<site>" (A, B, C: lungjax.data.phantom.sites) writes a phantom tree in its format instead
    config.data.manual_dir = ""
    config.data.data_dir = ""  # where the built dataset goes; default <workdir>/tfds
    # "patient" (disjoint, default; full14: NIH's official lists when in manual_dir) | "seed" (the reference's)
    config.data.split_scheme = "patient"
    config.data.stored_size = 256  # image size stored at build time
    config.data.phantom_patients = 700
    config.data.phantom_seed = 0
    config.data.skip_bad_images = False
    config.data.build_workers = 0  # 0: one per CPU core
    # Build-time options of the sources (not NIH, not the phantom): each changes what a build stores, and
    # names the built dataset (lungjax.data.source_builder.make_config); a source refuses another's.
    config.data.build_options = ml_collections.ConfigDict()
    config.data.build_options.frontal_only = False  # PA and AP films only
    config.data.build_options.no_finding_negates = False  # chexpert, mimic: No Finding = 1 negates the unstated
    config.data.build_options.labeller = "chexpert"  # mimic: "chexpert" | "negbio"
    config.data.build_options.readers = "majority"  # vindr: "majority" | "any" | "all"
    config.data.build_options.physician_test = False  # padchest: the physician-labelled rows are the test set

    config.image_size = 224  # size fed to the model
    config.augment = "light"  # "none" | "light" | "seed"
    config.worker_count = 0  # grain worker processes (0: in the main process)
    # The training augmentation's warp and intensity change inside the jitted step (the host only
    # decodes; the same draws, so the same pixels up to interpolation rounding): a GPU speed lever.
    config.augment_on_device = False

    config.model = ml_collections.ConfigDict()
    config.model.name = "resnet50"
    config.model.width = 1.0
    config.model.dropout_rate = 0.0
    # Keras' ResNet50 is v1 (stride in the first 1x1 of a block); ImageNet weights need it True.
    config.model.stride_in_1x1 = False
    # The stem's 7x7/2 conv as an exactly equal 4x4/1 one on 2x2 pixel blocks (same parameters): a GPU speed lever.
    config.model.stem_space_to_depth = False
    # The stem's conv on the image zero-padded to 4 channels (the kernel's extra channels zero;
    # the same output and parameters): the other GPU speed lever for the stem. Not with stem_space_to_depth.
    config.model.stem_pad_channels = False
    # Every later stride-2 conv (a stage's first block, its shortcut) as an exactly equal stride-1 conv on
    # 2x2 pixel blocks, the stored kernel rearranged in the forward pass (same parameters): a GPU speed
    # lever, not faster on the CPU (BENCHMARKS.md). ResNets only: DenseNet downsamples by pooling.
    config.model.strided_space_to_depth = False
    # BatchNorm's training gradient written by hand (models.batch_norm), one reduction and one
    # elementwise pass instead of autodiff's several; the same numbers. A GPU speed lever.
    config.model.fewer_pass_batch_norm = False
    # A Keras .h5 weights file (the stem's border kernel trains only then), or an earlier lungjax workdir.
    config.model.init_from = ""
    config.model.freeze_backbone_steps = 0  # train only the head for this many steps first

    config.batch_size = 64  # global, over all devices
    config.num_epochs = 30
    config.num_train_steps = -1  # > 0 overrides num_epochs
    config.optimizer = "adamw"  # "adam" | "adamw" | "sgd" | "lamb" | "lars" (the last two for batches of 768+)
    # The optimizer's mask-free moment updates on one flat vector (optax.flatten): fewer, larger kernels.
    # It changes the optimizer state's structure, so a run resumes only with the value it started with.
    config.optimizer_flatten = False
    config.learning_rate = 1e-3
    config.schedule = "cosine"  # "constant" | "cosine" (with linear warmup) | "plateau"
    config.warmup_epochs = 1.0
    # schedule="plateau": the learning rate is multiplied by `factor` after `patience` validations
    # without a lower validation loss (optax.contrib.reduce_on_plateau), down to `min_scale`.
    config.plateau = ml_collections.ConfigDict()
    config.plateau.factor = 0.1
    config.plateau.patience = 3
    config.plateau.cooldown = 0
    config.plateau.min_scale = 1e-3
    config.weight_decay = 1e-4
    config.grad_clip_norm = 0.0  # 0: no clipping
    # "balanced" | "none" | one number per class; full14: positive weights per finding ("balanced": negatives/positives)
    config.class_weights = "balanced"
    config.label_smoothing = 0.0
    config.focal_gamma = 0.0  # > 0: focal loss
    config.half_precision = False  # bfloat16 compute, float32 parameters
    config.ema_decay = 0.0  # > 0: validate, checkpoint (model item) and evaluate an EMA of the parameters

    config.checkpoint_every_steps = 500
    config.keep_checkpoints = 3
    config.log_every_steps = 50
    config.eval_every_steps = 0  # validate every this many steps; 0: once per epoch
    config.early_stop_patience = 0  # stop after this many validations without a lower val loss; 0: never
    config.seed = 0

    config.eval = ml_collections.ConfigDict()
    config.eval.checkpoint = "best"  # "best" (latest when no best was recorded) | "latest" | a step number
    config.eval.split = "test"  # "test" | "validation" | "train"
    config.eval.batch_size = 128
    config.eval.n_bootstrap = 1000
    config.eval.tta_crops = 1  # test-time augmentation: 1 (none) .. 6 (whole image + 5 crops), averaged
    config.eval.explain_examples = 16  # Grad-CAM grid of the worst-scored examples (0: no grid)
    config.eval.cam_stage = 4  # ResNet stage Grad-CAM explains: 4 (last, 1/32 of the input) .. 1
    # Per-class decision rules chosen on validation and held to on the evaluated split:
    # "youden" | "<sensitivity|specificity|ppv|npv>>=<value>"
    config.eval.operating_points = ("youden", "sensitivity>=0.95", "specificity>=0.9")
    config.eval.compare_to = ""  # another workdir (or this one): --mode compare scores both on the same images
    config.eval.compare_checkpoint = "best"  # which checkpoint of compare_to: "best" | "latest" | a step number
    # Evaluate on another source (external validation): a source's name and its folder (or "phantom[:site]");
    # the report goes to <workdir>/eval/<source name>/<split>/. Empty: the run's own data.
    config.eval.source = ""
    config.eval.manual_dir = ""

    # --mode external: trained runs scored on several sources' test splits (<workdir>/external/report.html)
    config.external = ml_collections.ConfigDict()
    config.external.runs = ()  # the trained runs' workdirs
    config.external.tests = ()  # ((source, manual_dir), ...): the test sources, each folder or "phantom[:site]"
    config.external.labels = ()  # the labels reported; empty: every label a run and an external source share
    config.external.probe_films = 256  # films per source the shortcut probes read
    return config


def complete(saved: dict) -> dict:
    """A config saved with a checkpoint, each key that an older lungjax did not write set to its default
    here: the behaviour a key selects by default is the one that run had. The one place where old
    checkpoints' missing keys are filled, for resuming and for evaluating alike."""
    return trees.with_defaults(saved, base_config().to_dict())
