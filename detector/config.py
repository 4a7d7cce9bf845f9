"""Configuration: typed defaults in code, YAML files that state only the difference, dotted CLI overrides.

    cfg = load_config("gfl_r50.yaml", ["optim.lr=0.02", "data.batch_size=4"])

A YAML file may name one `base: other.yaml` (relative to itself); the base may not name another.
Values are checked against the dataclass field types (a Literal field states its choices); an unknown key
or value is an error that names it and suggests the nearest valid one. A value that names an implementation
(a ResNet depth, a head type, an assigner, a dataset, an optimizer) is checked by `choose` against the
registry that holds the implementations, where it is built (and before a run starts: detector.check_model_config,
data.build.check_data_config). Defaults are the COCO 1x RetinaNet R50 settings of REFERENCE.md.
"""
import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Literal

import yaml

from .errors import UserError

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


class ConfigError(UserError, ValueError):
    """A config file or override that cannot be used; the message names the key."""


def choose(registry, value, key):
    """registry[value] (or value, for a tuple of names) for a config value naming an implementation; otherwise a
    ConfigError that names the key, the valid values (the registry's keys, the one place they are listed) and
    the nearest one."""
    if value in registry:
        return registry[value] if isinstance(registry, dict) else value
    valid = list(registry)
    nearby = difflib.get_close_matches(str(value), [str(v) for v in valid], n=1, cutoff=0.5)
    hint = f"; did you mean {nearby[0]!r}?" if nearby else ""
    raise ConfigError(f"config key '{key}' must be one of {valid}, got {value!r}{hint}")


@dataclass
class BackboneConfig:
    depth: int = 50                      # ResNet-18/34/50/101 from torchvision (backbone.RESNETS)
    frozen_stages: int = 1               # stem + stage 1 frozen (reference); -1 trains everything
    norm: str = "bn"                     # bn (reference) | frozen_bn (affine fixed too, torchvision / detectron2)
    norm_eval: bool = True               # BN statistics frozen (reference, pretrained); false: trained (from scratch)
    pretrained: typing.Optional[str] = "torchvision"  # 'torchvision' ImageNet weights | a local .pth path | null
    zero_init_residual: bool = False     # from scratch: each block's last BN gamma starts at 0 (block = identity)
    fold_norm: bool = True               # speed only: conv + running-statistics BN run as one conv (same numbers)


@dataclass
class FPNConfig:
    out_channels: int = 256
    extra_from: str = "c5"               # P6 from 'c5' (RetinaNet) or from 'p5' (ATSS, GFL); P7 from P6
    # P7 = conv(relu(P6)) (mmdetection's relu_before_extra_convs, its FCOS; torchvision's LastLevelP6P7) instead of
    # conv(P6) (mmdetection's RetinaNet, ATSS and GFL: false)
    relu_before_extra_convs: bool = False


@dataclass
class HeadConfig:
    type: str = "retinanet"              # retinanet | atss | gfl (detector.HEAD_TYPES)
    stacked_convs: int = 4
    feat_channels: int = 256
    norm: typing.Optional[str] = None    # null (RetinaNet) | gn (GroupNorm(32), ATSS and GFL)
    prior_prob: float = 0.01             # classification bias b = -log((1 - pi) / pi)
    reg_max: int = 16                    # GFL: distances in 0..reg_max stride units (reg_max + 1 bins)


@dataclass
class AnchorConfig:
    octave_base_scale: float = 4.0       # anchor side = stride * octave_base_scale * 2^(k / scales_per_octave)
    scales_per_octave: int = 3
    ratios: typing.List[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    strides: typing.List[int] = field(default_factory=lambda: [8, 16, 32, 64, 128])
    offset: float = 0.0                  # grid centres at (i + offset) * stride; 0 as mmdetection


@dataclass
class AssignerConfig:
    type: str = "max_iou"                # max_iou | atss (criterion.ASSIGNERS)
    pos_iou_thr: float = 0.5
    neg_iou_thr: float = 0.4
    min_pos_iou: float = 0.0
    low_quality: Literal["mmdet", "torchvision", "none"] = "mmdet"  # low-quality matches of max-IoU
    topk: int = 9                        # ATSS candidates per level (x anchors per location)
    # Crowd (iscrowd) boxes are never positives. mmdetection also leaves them out of the negatives' side of
    # assignment (-1: anchors on a crowd are ordinary negatives); >= 0: anchors with this IoF are ignored.
    crowd_iof_thr: float = -1.0


@dataclass
class LossConfig:
    type: str = "focal"                  # a name from the table in losses/__init__.py
    weight: float = 1.0
    params: typing.Dict[str, typing.Any] = field(default_factory=dict)  # keyword arguments of the loss function


@dataclass
class TestConfig:
    score_thr: float = 0.05
    nms_pre: int = 1000                  # top-k candidates per level before NMS
    nms_iou: float = 0.5                 # 0.5 RetinaNet, 0.6 ATSS / GFL
    max_per_img: int = 100


@dataclass
class ModelConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    assigner: AssignerConfig = field(default_factory=AssignerConfig)
    loss_cls: LossConfig = field(default_factory=lambda: LossConfig("focal", 1.0, {"alpha": 0.25, "gamma": 2.0}))
    loss_box: LossConfig = field(default_factory=lambda: LossConfig("l1", 1.0))
    loss_dfl: LossConfig = field(default_factory=lambda: LossConfig("distribution_focal", 0.25))
    loss_centerness: LossConfig = field(default_factory=lambda: LossConfig("bce", 1.0))
    test: TestConfig = field(default_factory=TestConfig)
    # RetinaNet's loss normaliser: "batch" (mmdetection: both losses / the batch's positives, sum over images of
    # max(positives, 1)) or "image" (torchvision's RetinaNet: each image's losses / its own max(positives, 1),
    # averaged over the images).
    normaliser: Literal["batch", "image"] = "batch"


@dataclass
class DataConfig:
    # coco | lvis (LVIS v1 through the lvis package: LVISEval, APr/APc/APf) | shapes | shapes_lvis (embedded
    # synthetic sets in COCO and in long-tailed LVIS format, generated on first use): data.build.DATASETS
    dataset: str = "coco"
    train_images: str = "datasets/coco/train2017"
    train_ann: str = "datasets/coco/annotations/instances_train2017.json"
    val_images: str = "datasets/coco/val2017"
    val_ann: str = "datasets/coco/annotations/instances_val2017.json"
    shapes_root: str = "datasets/shapes"  # where the shapes set is written (git-ignored)
    shapes_lvis_root: str = "datasets/shapes_lvis"  # where the long-tailed LVIS-format shapes set is written
    shapes_num_train: int = 1200         # images of the generated train / val splits (shapes and shapes_lvis)
    shapes_num_val: int = 200
    # Repeat-factor sampling threshold t (data/repeat_factors.py): an image repeats max(1, sqrt(t / f_c)) times for
    # its rarest class c, f_c the fraction of train images containing c. LVIS recipe 0.001; null: off.
    repeat_threshold: typing.Optional[float] = None
    train_short_sides: typing.List[int] = field(default_factory=lambda: [800])
    short_side_mode: Literal["choice", "range"] = "choice"  # one of train_short_sides | uniform in [min, max]
    max_size: int = 1333
    test_short_side: int = 800
    flip_prob: float = 0.5
    train_crop: typing.Optional[typing.List[int]] = None  # [height, width]: random crop after the resize (train)
    remove_images_without_annotations: bool = True
    batch_size: int = 2                  # per process; total = batch_size x world size
    workers: int = 2
    size_divisor: int = 32


@dataclass
class OptimConfig:
    type: str = "sgd"                    # sgd (reference) | adamw (engine.OPTIMIZERS)
    lr: float = 0.01                     # at base_batch_size; scaled linearly to the real total batch
    base_batch_size: int = 16
    momentum: float = 0.9                # SGD momentum
    betas: typing.List[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW
    weight_decay: float = 1e-4
    decay_norm_and_bias: bool = True     # false: no weight decay on 1-d parameters (biases, norm terms, Scales)
    warmup_iters: int = 500
    warmup_ratio: float = 0.001          # warmup starts at warmup_ratio x lr
    schedule: Literal["step", "cosine"] = "step"  # x gamma at milestones (reference) | cosine to min_lr_ratio x lr
    milestones: typing.List[int] = field(default_factory=lambda: [8, 11])  # epochs where lr x gamma (step)
    min_lr_ratio: float = 0.01           # cosine: the last iteration's lr / lr
    gamma: float = 0.1
    grad_clip: typing.Optional[float] = None  # max L2 norm of all gradients; null disables


@dataclass
class TrainConfig:
    epochs: int = 12
    eval_interval: int = 12              # evaluate every N epochs (and always at the end)
    checkpoint_interval: int = 1         # keep epoch_N.pth every N epochs (last.pth always)
    save_optimizer: Literal["last", "all"] = "last"  # optimizer state in last.pth only (resume), or in epoch_N.pth too
    log_interval: int = 50
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Precision (detector/precision.py): auto = bf16 where the hardware has it natively, fp16 + GradScaler on older
    # GPUs, fp32 otherwise. YAML true / false (and `off`, which YAML reads as false) mean auto / off.
    amp: typing.Union[Literal["auto", "bf16", "fp16", "off"], bool] = "auto"
    channels_last: bool = False          # NHWC tensors: faster convolutions on CPUs (oneDNN) and with AMP on GPUs
    # torch.compile the model (backbone, FPN, head; the criterion and post-processing stay eager) for training:
    # inductor generates fused kernels (GPUs; a C++ compiler on CPUs), aot_eager only traces (checks that the model
    # compiles, no speed-up). Each new padded input shape recompiles until torch marks the sizes dynamic.
    compile: bool = False
    compile_backend: Literal["inductor", "aot_eager", "eager"] = "inductor"
    max_iters: typing.Optional[int] = None  # stop early after this many iterations (tests, smoke runs)
    # Resumable checkpoints (weights, optimizer, EMA, RNG of every rank, sampler position): iter_N.pth every N
    # optimizer steps and at every epoch end, last.pth pointing at the newest; the newest keep_checkpoints iter_N.pth
    # stay. A COCO 1x epoch is 7,330 steps: 1000 loses at most minutes on 8 GPUs. null: epoch ends only.
    checkpoint_every_iters: typing.Optional[int] = 1000
    keep_checkpoints: int = 3
    # Exponential moving average of the weights, evaluated and saved as 'model' instead of the raw weights: decay
    # ema_decay x (1 - exp(-updates / ema_warmup)) (YOLOX ModelEMA, mmdetection ExpMomentumEMA: 0.9998, 2000).
    ema: bool = False
    ema_decay: float = 0.9998
    ema_warmup: int = 2000
    sync_bn: bool = False                # SyncBatchNorm for trained BN statistics (norm bn, norm_eval false), GPUs only
    accumulate: int = 1                  # batches per optimizer step: the lr, schedule and total batch of a k x batch
    # A non-finite loss or gradient: stop with the iteration, the loss terms and the batch's image ids and files
    # (the last checkpoint stays good), or skip that step; more than max_nonfinite_skips skips in a row stop.
    on_nonfinite: Literal["stop", "skip"] = "stop"
    max_nonfinite_skips: int = 3


@dataclass
class EvalConfig:
    # COCO metrics: pycocotools' COCOeval (the reference) or faster-coco-eval (same numbers, C++ evaluate/accumulate)
    backend: Literal["pycocotools", "faster"] = "pycocotools"
    # eval.py only: torch.compile the loaded model for inference (backend train.compile_backend). With inductor the
    # weights are frozen into the graph as constants: convolution weights pre-packed for oneDNN on CPUs, conv + bias
    # + activation fused, BatchNorm folded. The first batch compiles (minutes on a 2-core CPU), each new padded
    # input shape may recompile. train.py's evaluations stay eager: its weights change between them.
    compile: bool = False


@dataclass
class Config:
    name: str = "default"
    work_dir: typing.Optional[str] = None  # default work_dirs/<name>
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ---------------------------------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that also reads exponent floats without a dot ('1e-4', '2E5') as floats.

    PyYAML follows YAML 1.1, where `lr: 1e-4` is the string '1e-4'; YAML 1.2 and every user mean a float.
    """


_Loader.yaml_implicit_resolvers = {key: list(value) for key, value in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _safe_load(text_or_stream):
    """yaml.safe_load with _Loader (a SafeLoader subclass: plain data only, never arbitrary objects)."""
    loader = _Loader(text_or_stream)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def resolve_config_path(path):
    """`path` as given, else configs/<path>; a missing file is a ConfigError."""
    for candidate in (path, os.path.join(CONFIG_DIR, path)):
        if os.path.isfile(candidate):
            return candidate
    raise ConfigError(f"config file not found: {path} (looked in . and {CONFIG_DIR})")


def _read_yaml(path):
    try:
        with open(path) as f:
            data = _safe_load(f) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def merge_dicts(base, override):
    """Recursive merge; a section whose `type` changes drops the base's `params` (they belong to the old type)."""
    out = dict(base)
    if "type" in override and override["type"] != out.get("type"):
        out.pop("params", None)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_dicts(out[key], value)
        else:
            out[key] = value
    return out


def _type_ok(value, annotation):
    origin = typing.get_origin(annotation)
    if annotation is typing.Any:
        return True
    if origin is Literal:
        return value in typing.get_args(annotation) and not isinstance(value, bool)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin in (list, tuple):
        (item,) = typing.get_args(annotation)[:1]
        return isinstance(value, (list, tuple)) and all(_type_ok(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def _literal_choices(annotation):
    """The choices of a Literal annotation (or of a Literal inside a Union); [] for other types."""
    return [choice for arg in (annotation, *typing.get_args(annotation)) if typing.get_origin(arg) is Literal
            for choice in typing.get_args(arg)]


def _type_name(annotation):
    if _literal_choices(annotation):
        return f"one of {_literal_choices(annotation)}"
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _apply(instance, data, prefix):
    """Set the fields of dataclass `instance` from the nested dict `data`, checking keys and types.

    Nested sections update the instance's current values (so `model.loss_box.weight=3` keeps the default
    box loss type); a section whose `type` changes starts with empty `params`.
    """
    hints = typing.get_type_hints(type(instance))
    if "type" in data and "params" in hints and data["type"] != instance.type:
        instance.params = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in hints:
            nearby = difflib.get_close_matches(key, list(hints), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(prefix + n for n in nearby)}?" if nearby else ""
            raise ConfigError(f"unknown config key '{dotted}'{hint} (valid: {', '.join(hints)})")
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{dotted}' must be a mapping, got {value!r}")
            value = _apply(getattr(instance, key), value, dotted + ".")
        elif not _type_ok(value, annotation):
            choices = _type_name(annotation)
            nearby = difflib.get_close_matches(str(value), [str(c) for c in _literal_choices(annotation)], n=1,
                                               cutoff=0.5)
            hint = f"; did you mean {nearby[0]!r}?" if nearby else ""
            raise ConfigError(f"config key '{dotted}' expects {choices}, got {value!r}{hint}")
        elif annotation is float and isinstance(value, int):
            value = float(value)
        elif isinstance(value, dict):
            value = {**getattr(instance, key), **value}  # `params`: update, don't replace
        setattr(instance, key, value)
    return instance


def parse_overrides(overrides):
    """['optim.lr=0.02', ...] -> nested dict; values parsed as YAML ('0.02' -> float, '[1,2]' -> list)."""
    nested = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like dotted.key=value")
        key, text = item.split("=", 1)
        try:
            value = _safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"override '{item}': value is not valid YAML") from None
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def load_config(path=None, overrides=()):
    """Defaults <- base file <- config file <- CLI overrides, type-checked. `name` defaults to the file stem."""
    data = {}
    if path is not None:
        path = resolve_config_path(path)
        data = _read_yaml(path)
        base = data.pop("base", None)
        if base is not None:
            base_path = resolve_config_path(os.path.join(os.path.dirname(path), base))
            base_data = _read_yaml(base_path)
            if "base" in base_data:
                raise ConfigError(f"{base_path}: a base file may not name another base")
            data = merge_dicts(base_data, data)
        data.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    data = merge_dicts(data, parse_overrides(overrides))
    return validate(_apply(Config(), data, ""))


# Numeric fields with a lower bound: checked after every load, so a bad value is a ConfigError naming the key,
# not an error deep inside model construction. (Choices are Literal fields above, or registries: see `choose`.)
MINIMUM = {
    "model.backbone.frozen_stages": -1, "model.fpn.out_channels": 1, "model.head.stacked_convs": 0,
    "model.head.feat_channels": 1, "model.head.reg_max": 1, "model.anchors.scales_per_octave": 1,
    "model.assigner.topk": 1, "model.test.nms_pre": 1, "model.test.max_per_img": 1,
    "data.shapes_num_train": 1, "data.shapes_num_val": 1, "data.max_size": 1, "data.test_short_side": 1,
    "data.batch_size": 1, "data.workers": 0, "data.size_divisor": 1, "optim.base_batch_size": 1,
    "optim.warmup_iters": 0, "train.epochs": 1, "train.eval_interval": 1, "train.checkpoint_interval": 1,
    "train.log_interval": 1, "train.max_iters": 1, "train.checkpoint_every_iters": 1, "train.keep_checkpoints": 1,
    "train.ema_warmup": 0, "train.accumulate": 1, "train.max_nonfinite_skips": 1,
}


def _get(cfg, dotted):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def validate(cfg):
    """Check choices, bounds and cross-field rules; the first problem is a ConfigError naming the key."""
    if isinstance(cfg.train.amp, bool):  # YAML reads `off` as false; earlier configs said true / false
        cfg.train.amp = "auto" if cfg.train.amp else "off"
    for key, minimum in MINIMUM.items():
        value = _get(cfg, key)
        if value is not None and value < minimum:
            raise ConfigError(f"config key '{key}' must be >= {minimum}, got {value}")
    if len(cfg.model.anchors.strides) != 5:
        raise ConfigError(f"config key 'model.anchors.strides' needs 5 strides (P3-P7), "
                          f"got {cfg.model.anchors.strides}")
    if not cfg.model.anchors.ratios:
        raise ConfigError("config key 'model.anchors.ratios' must not be empty")
    sides = cfg.data.train_short_sides
    if not sides or min(sides) < 1:
        raise ConfigError(f"config key 'data.train_short_sides' needs at least one positive size, got {sides}")
    crop = cfg.data.train_crop
    if crop is not None and (len(crop) != 2 or min(crop) < 1):
        raise ConfigError(f"config key 'data.train_crop' needs [height, width] > 0 (or null), got {crop}")
    if cfg.data.repeat_threshold is not None and not 0 < cfg.data.repeat_threshold <= 1:
        raise ConfigError(f"config key 'data.repeat_threshold' must be in (0, 1] (or null), "
                          f"got {cfg.data.repeat_threshold}")
    if not 0 <= cfg.data.flip_prob <= 1:
        raise ConfigError(f"config key 'data.flip_prob' must be in [0, 1], got {cfg.data.flip_prob}")
    if len(cfg.optim.betas) != 2:
        raise ConfigError(f"config key 'optim.betas' needs 2 values, got {cfg.optim.betas}")
    if not 0 <= cfg.optim.min_lr_ratio <= 1:
        raise ConfigError(f"config key 'optim.min_lr_ratio' must be in [0, 1], got {cfg.optim.min_lr_ratio}")
    if not 0 < cfg.train.ema_decay < 1:
        raise ConfigError(f"config key 'train.ema_decay' must be in (0, 1), got {cfg.train.ema_decay}")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"config key 'optim.lr' must be > 0, got {cfg.optim.lr}")
    return cfg


def config_to_dict(cfg):
    return dataclasses.asdict(cfg)


def config_from_dict(data):
    """Inverse of config_to_dict (used when a checkpoint carries its config)."""
    return validate(_apply(Config(), data, ""))


def dump_config(cfg, path):
    """Write the resolved config as YAML, atomically (a temporary file renamed over `path`)."""
    temporary = f"{path}.tmp.{os.getpid()}"
    with open(temporary, "w") as f:
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False)
    os.replace(temporary, path)
