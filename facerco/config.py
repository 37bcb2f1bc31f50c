"""Typed experiment configs: dataclasses loaded from YAML with `_base_` inheritance and dotted overrides.

Precedence is defaults < file (after its bases) < command-line overrides. Every key is checked against the
schema: an unknown key names the nearest valid one, a wrongly typed value names the key, the file and the
expected type. Derived values (total steps, scaled lr) are never written back into the config.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

__all__ = [
    "ConfigError",
    "Config",
    "DataConfig",
    "ModelConfig",
    "LossConfig",
    "OptimConfig",
    "ScheduleConfig",
    "TrainConfig",
    "RouteConfig",
    "DistillConfig",
    "StrategyName",
    "EeisConfig",
    "GssConfig",
    "BestConfig",
    "EarlyConfig",
    "PhaseConfig",
    "ManualConfig",
    "MOVED_DISTILL_KEYS",
    "ConfigDeprecationWarning",
    "StageConfig",
    "EvalConfig",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "apply_overrides",
    "dump_config",
]


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and the source."""


class ConfigDeprecationWarning(FutureWarning):
    """A config uses a key of an earlier version; it is read as its new form (a FutureWarning, so users see it)."""


# ----------------------------------------------------------------------------------------------------------------
# Schema
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Where training images come from and how they are read."""

    # explicit reader scheme, never guessed from files: rec, folder (one sub-folder per identity), images (a flat
    # folder of aligned images without identities: labels -1, for students that only mimic)
    format: Literal["rec", "folder", "images"] = "rec"
    train: str = ""  # dataset folder: train.rec/train.idx/property, an identity folder, or a flat image folder
    val_bins: list[str] = field(default_factory=list)  # verification .bin files evaluated during training
    val_pairs: str = ""  # optional LFW-style pairs.txt evaluated during training (with val_root)
    val_root: str = ""
    num_workers: int = 2
    image_size: int = 112  # network input side; images of another size are resized
    flip: bool = True  # random horizontal flip p=0.5, the only augmentation of the reference recipe


@dataclass
class ModelConfig:
    """Backbone choice; None leaves the registered variant's default."""

    name: str = "iresnet50"
    embedding_size: int | None = None
    dropout: float | None = None
    width_mult: float | None = None  # reduced-width variants for CPU-scale runs, where the family supports it
    activation: str | None = None  # MobileFaceNet: prelu (published) or relu (runs fully in int8 in onnxruntime)


@dataclass
class LossConfig:
    """Margin softmax s*(cos(m1*theta + m2) - m3); presets fill m1/m2/m3 when left None."""

    name: Literal["arcface", "cosface", "combined", "softmax"] = "arcface"
    s: float = 64.0
    m1: float | None = None
    m2: float | None = None
    m3: float | None = None
    gradient: Literal["exact", "straight_through"] = "exact"  # target-logit gradient convention (losses/margin.py)
    sample_rate: float = 1.0  # Partial FC negative sampling; 1.0 = full softmax over this rank's shard
    overflow: Literal["threshold", "easy", "none"] = "threshold"  # target logit where m1*theta + m2 > pi
    eps: float = 1e-6  # gradient=exact: cos clamped to [-1+eps, 1-eps] before arccos


@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.1  # for the global batch; not rescaled silently
    momentum: float = 0.9
    weight_decay: float = 5e-4
    classifier_lr_mult: float = 1.0
    nesterov: bool = False


@dataclass
class ScheduleConfig:
    """Per-iteration learning-rate schedule: linear warm-up, then decay."""

    warmup_epochs: float = 0.0
    decay: Literal["linear", "cosine", "step", "constant"] = "linear"
    milestones: list[float] = field(default_factory=list)  # epochs, for decay=step
    gamma: float = 0.1
    min_lr: float = 0.0


@dataclass
class TrainConfig:
    output: str = "runs/run"
    epochs: float = 20.0
    max_steps: int = 0  # >0 stops after this many optimizer steps (smoke runs); the schedule still spans `epochs`
    batch_size: int = 128  # per rank
    grad_clip: float = 5.0  # max grad-norm on the backbone; 0 disables
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # auto: fp16+GradScaler on CUDA, off on CPU
    seed: int = 0
    deterministic: bool = True
    device: str = "auto"
    log_every: int = 50
    val_every_epochs: float = 1.0
    checkpoint_every_steps: int = 0  # resume checkpoints (last.pt); 0 = at route points and epoch ends only
    resume: bool = True
    tensorboard: bool = True
    progress: bool = True
    sync_bn: bool = False  # SyncBatchNorm under DDP (CUDA only); default keeps per-rank BN statistics like insightface
    channels_last: bool = False  # NHWC weights and inputs: faster convolutions (CPU depthwise ~1.6x); other rounding
    threads: int = 0  # torch CPU threads; 0 = the cores not busy at start (measured over 0.5 s); N > 0 pins it


@dataclass
class RouteConfig:
    """How the teacher's route (checkpoints along training) is recorded."""

    every_epochs: float = 1.0  # a route point every N epochs (fractions allowed)
    every_steps: int = 0  # overrides every_epochs when > 0
    keep: Literal["all", "every_k"] = "all"
    keep_every: int = 1
    save_classifier: bool = True  # needed for logit KD from anchors


@dataclass
class StageConfig:
    """One explicit stage of a multi-stage distillation (torchdistill-style list of stages)."""

    anchor: str = ""  # route point name (e.g. 'epoch_006') or 'final'
    epochs: float = 1.0
    lr: float | None = None  # None keeps optim.lr
    steps: int = 0  # stage length in optimizer steps; overrides epochs when > 0


StrategyName = Literal["final", "best", "eeis", "gss", "manual", "none", "lockstep", "phase", "early", "ensemble",
                       "reverse", "gss_online"]
"""``distill.strategy``: the names of the strategy registry (:mod:`facerco.distill.strategies`; a test checks both
agree). The schema keeps the list so a misspelt strategy fails when the config loads, before any import of torch."""


@dataclass
class EeisConfig:
    """``distill.eeis``: Equal Epoch Interval anchors (strategy eeis, and reverse, its control in reverse order)."""

    num_anchors: int = 4  # n evenly spaced route points ending with the final one (gss_online: its default slots)
    every: int = 0  # every k-th route point instead of num_anchors, when > 0


@dataclass
class GssConfig:
    """``distill.gss``: the greedy search's threshold, probe set and divergence (strategies gss and gss_online)."""

    delta: float = 0.5
    delta_mode: Literal["absolute", "relative"] = "relative"
    probe_images: int = 512
    seed: int = 0  # seeds the probe-set choice; the initial student uses train.seed
    divergence: Literal["auto", "kl", "l2", "cosine", "relational"] = "auto"
    use_logits: bool = True  # KL of softened logits when the route stores classifiers
    max_anchors: int = 0  # cap on the number of anchors (final included); 0 = no cap (gss_online: eeis.num_anchors)


@dataclass
class BestConfig:
    """``distill.best``: the validation metric that ranks route points (strategies best and early)."""

    metric: str = ""  # route val metric to maximise; empty = the first one recorded


@dataclass
class EarlyConfig:
    """``distill.early``: the early-stopped teacher point (strategy early)."""

    point: str = ""  # the route point to follow; empty = the best by distill.best.metric before the last lr phase


@dataclass
class PhaseConfig:
    """``distill.phase``: what counts as an lr drop of the teacher (strategies phase, early and ensemble)."""

    drop_ratio: float = 0.5  # a drop is a next-point lr below this x the current


@dataclass
class ManualConfig:
    """``distill.manual``: route points named by hand (strategy manual; strategy ensemble averages them)."""

    anchors: list[str] = field(default_factory=list)  # route point names, in route order


@dataclass
class DistillConfig:
    """RCO: which anchors from the teacher route, on what schedule, with which losses.

    Each strategy's knobs live in its own section (``eeis``, ``gss``, ``best``, ``early``, ``phase``, ``manual``);
    the registry in :mod:`facerco.distill.strategies` says which sections a strategy reads. The flat keys of
    earlier versions (``gss_delta``, ``num_anchors``, ...: :data:`MOVED_DISTILL_KEYS`) are still read, with a notice.
    """

    teacher_run: str = ""  # teacher run directory holding route.json
    strategy: StrategyName = "final"  # final is the recommended strategy; the others are studies and controls
    eeis: EeisConfig = field(default_factory=EeisConfig)
    gss: GssConfig = field(default_factory=GssConfig)
    best: BestConfig = field(default_factory=BestConfig)
    early: EarlyConfig = field(default_factory=EarlyConfig)
    phase: PhaseConfig = field(default_factory=PhaseConfig)
    manual: ManualConfig = field(default_factory=ManualConfig)
    schedule: Literal["one_stage", "multi_stage"] = "one_stage"
    final_share: float = 0.25  # share of the budget spent on the final teacher
    restart_lr: bool = True  # multi-stage: each stage restarts the lr schedule
    gate: bool = False  # skip anchors whose val metric is below the student's current one
    gate_metric: str = ""  # val metric the gate compares; empty = the first one both sides report
    stages: list[StageConfig] = field(default_factory=list)  # explicit stages override the automatic plan
    mimic_weight: float = 1.0
    mimic_type: Literal["l2", "cosine"] = "l2"
    kd_weight: float = 0.0
    kd_temperature: float = 4.0
    hint_weight: float = 0.0
    hint_student_layer: str = ""
    hint_teacher_layer: str = ""
    arcface_weight: float = 1.0
    cache: str = ""  # anchor-feature cache directory; empty = run the teacher online
    cache_verify: bool = True  # check every cache shard's sha256 when it is opened
    # subtract the teacher's mean target over the cached training set, then renormalize: a published teacher whose
    # embeddings share a large common direction (dlib: raw cosine of two people ~0.83) otherwise teaches that
    # direction and little else. Needs distill.cache.
    target_center: bool = False


@dataclass
class EvalConfig:
    bins: list[str] = field(default_factory=list)
    test_pairs: str = ""  # the reported test set (LFW pairs file); `compare` refuses a data.val_pairs equal to it
    test_bins: list[str] = field(default_factory=list)  # the reported test .bin sets; never data.val_bins either
    batch_size: int = 256
    far_targets: list[float] = field(default_factory=lambda: [1e-3, 1e-4])


@dataclass
class Config:
    """A whole experiment; each job reads the sections it needs."""

    kind: Literal["teacher", "student"] = "teacher"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    route: RouteConfig = field(default_factory=RouteConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ----------------------------------------------------------------------------------------------------------------
# Keys of earlier versions
# ----------------------------------------------------------------------------------------------------------------

MOVED_DISTILL_KEYS: dict[str, tuple[str, str]] = {
    "num_anchors": ("eeis", "num_anchors"),
    "eeis_every": ("eeis", "every"),
    "gss_delta": ("gss", "delta"),
    "gss_delta_mode": ("gss", "delta_mode"),
    "gss_probe_images": ("gss", "probe_images"),
    "gss_seed": ("gss", "seed"),
    "gss_divergence": ("gss", "divergence"),
    "gss_use_logits": ("gss", "use_logits"),
    "gss_max_anchors": ("gss", "max_anchors"),
    "best_metric": ("best", "metric"),
    "early_point": ("early", "point"),
    "phase_drop_ratio": ("phase", "drop_ratio"),
    "anchors": ("manual", "anchors"),
}
"""Flat ``distill`` keys of earlier versions -> the (section, key) they are read as."""

_NOTICED: set[str] = set()  # deprecated keys already announced in this process


def _notice_moved(old: str, source: str) -> None:
    """One line per deprecated key and process: the key, its new spelling, and where it was first seen."""
    if old in _NOTICED:
        return
    _NOTICED.add(old)
    section, key = MOVED_DISTILL_KEYS[old]
    # attributed to the config itself (line 0: no source line under it), so the notice is one line naming the file
    warnings.warn_explicit(f"distill.{old} is deprecated; write distill.{section}.{key} (read as that)",
                           ConfigDeprecationWarning, source, 0)


def _migrate_distill(data: dict[str, Any], source: str) -> dict[str, Any]:
    """A ``distill`` mapping with its flat keys of earlier versions moved into their strategy sections.

    Every way a config arrives (a file and each of its bases, a dotted override, a run folder's config.yaml, a
    dict) passes through here before it is merged, so old configs and old run folders load unchanged and the usual
    precedence holds between old and new spellings. One mapping that sets a key both ways with different values is
    refused: which one was meant cannot be known.
    """
    if not any(k in MOVED_DISTILL_KEYS for k in data):
        return data
    out = {k: v for k, v in data.items() if k not in MOVED_DISTILL_KEYS}
    for old in (k for k in data if k in MOVED_DISTILL_KEYS):
        section, key = MOVED_DISTILL_KEYS[old]
        node = out.get(section, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: key 'distill.{section}' expects a mapping, got {type(node).__name__}")
        if key in node and node[key] != data[old]:
            raise ConfigError(f"{source}: distill.{old}={data[old]!r} (deprecated) and distill.{section}.{key}="
                              f"{node[key]!r} disagree; keep distill.{section}.{key}")
        out[section] = {**node, key: data[old]}
        _notice_moved(old, source)
    return out


def _migrate(data: dict[str, Any], source: str) -> dict[str, Any]:
    """A whole config mapping with the ``distill`` keys of earlier versions in their new places."""
    distill = data.get("distill")
    if isinstance(distill, dict):
        moved = _migrate_distill(distill, source)
        if moved is not distill:
            return {**data, "distill": moved}
    return data


def _moved_override(parts: list[str], source: str) -> list[str]:
    """The key path of an override, ``distill.gss_delta`` read as ``distill.gss.delta``."""
    if len(parts) == 2 and parts[0] == "distill" and parts[1] in MOVED_DISTILL_KEYS:
        _notice_moved(parts[1], source)
        return ["distill", *MOVED_DISTILL_KEYS[parts[1]]]
    return parts


# ----------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints widen to float, nothing else is converted."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{source}: key '{key}' expects {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{source}: key '{key}' must be one of {list(args)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{source}: key '{key}' expects a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: key '{key}' expects a mapping, got {type(value).__name__}")
        return _build(tp, value, source, prefix=f"{key}.")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{source}: key '{key}' expects float, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: key '{key}' expects int, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: key '{key}' expects bool (true/false), got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: key '{key}' expects str, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{source}: key '{key}' has an unsupported schema type {_type_name(tp)}")


def _did_you_mean(cls: type, key: str, names: list[str], prefix: str) -> str:
    """The nearest valid key (a misspelt flat key of an earlier version names its new place), else every key."""
    moved = {old: ".".join(new) for old, new in MOVED_DISTILL_KEYS.items()} if cls is DistillConfig else {}
    close = difflib.get_close_matches(key, [*names, *moved], n=1)
    if not close:
        return f"; valid keys: {', '.join(names)}"
    return f"; did you mean '{prefix}{moved.get(close[0], close[0])}'?"


def _build(cls: type[T], data: dict[str, Any], source: str, prefix: str = "") -> T:
    if cls is DistillConfig:
        data = _migrate_distill(data, source)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in hints:
            raise ConfigError(f"{source}: unknown key '{prefix}{key}'{_did_you_mean(cls, str(key), names, prefix)}")
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}", source)
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any], source: str = "<dict>", cls: type[T] = Config) -> T:  # type: ignore[assignment]
    """Build a typed config from a plain mapping, checking every key and type."""
    return _build(cls, data, source)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-dict view of a config, in schema order."""
    return dataclasses.asdict(cfg)


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml_tree(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML file and its `_base_` files (a path or a list, relative to the file), bases first."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: `_base_` cycle through {' -> '.join(str(p) for p in seen)}")
    if not path.is_file():
        where = f" (a _base_ of {seen[-1]})" if seen else ""
        raise ConfigError(f"{path}: config file not found{where}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    data = _migrate(data, str(path))
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    merged: dict[str, Any] = {}
    for base in bases:
        merged = _deep_merge(merged, _read_yaml_tree(path.parent / base, (*seen, path)))
    return _deep_merge(merged, data)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML ({exc})") from exc
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted overrides (``train.lr=0.05``) to a plain mapping; values are parsed as YAML scalars."""
    out = copy.deepcopy(data)
    for text in overrides:
        parts, value = _parse_override(text)
        parts = _moved_override(parts, f"override '{text}'")
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return out


def load_config(path: str | Path | None, overrides: list[str] | None = None, cls: type[T] = Config) -> T:  # type: ignore[assignment]
    """Load a YAML config (with bases) and overrides into the typed schema."""
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        data = _read_yaml_tree(Path(path))
        source = str(path)
    if overrides:
        data = apply_overrides(data, overrides)
        source = f"{source} + overrides"
    return config_from_dict(data, source, cls)


def dump_config(cfg: Any) -> str:
    """The resolved config as YAML, the form written to every run folder."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
