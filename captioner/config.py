"""Configuration dataclasses. A checkpoint stores them as JSON, so it describes itself."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class Preprocess:
    """How an image file becomes the encoder's input tensor.

    The checkpoint and the prepared features both carry this, so training features and
    inference-time captions are computed from exactly the same pixels.
    """

    resize: int = 64  # shorter side resized to this (or the whole frame when crop == 0)
    crop: int = 0  # centre crop size; 0 squashes the whole frame to resize x resize
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @property
    def input_size(self) -> int:
        return self.crop or self.resize

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocess":
        """From its JSON form (lists where the dataclass holds tuples)."""
        return cls(**{**data, "mean": tuple(data["mean"]), "std": tuple(data["std"])})


SELECT_METRICS = ("BLEU-4", "CIDEr-D")  # scores of the decoded val captions (nltk BLEU-4)
BATCH_BY = ("image", "caption")  # a batch is images with all their captions, or caption pairs
DEEP_OUTPUTS = ("linear", "tanh")  # eq. 7 as printed, or with the tanh of the authors' code


@dataclass
class ModelConfig:
    """Everything needed to rebuild a captioning model (Xu et al. 2015)."""

    vocab_size: int
    encoder: str = "tiny"
    grid_size: int = 8  # features are pooled to grid_size x grid_size locations (P = grid^2)
    pretrained: bool = True
    fine_tune_blocks: int | None = None  # last N encoder blocks trained; -1 all; None: encoder default
    feature_dim: int = 0  # D, filled in from the encoder by build_model
    attention: str = "soft"
    embed_dim: int = 256
    hidden_dim: int = 512
    attention_dim: int = 256
    dropout: float = 0.5
    max_len: int = 20  # longest caption in words, without <start>/<end>
    alpha_c: float = 1.0  # lambda of the doubly stochastic term (eq. 14)
    gate: bool = True  # beta gating scalar (section 4.2.1)
    deep_output: str = "linear"  # one of DEEP_OUTPUTS
    # the options of the attention kind (its Attention.Options fields); {} for its defaults
    attention_options: dict[str, Any] = field(default_factory=dict)
    preprocess: Preprocess = field(default_factory=Preprocess)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        data = dict(data)
        # checkpoints written before attention kinds owned their options kept hard attention's
        # as top-level hard_* fields
        legacy = {k[len("hard_"):]: data.pop(k) for k in list(data) if k.startswith("hard_")}
        if legacy and data.get("attention") == "hard":
            data.setdefault("attention_options", legacy)
        return _from_dict(cls, data)


@dataclass
class TrainConfig:
    """How a model is trained; stored in the run's checkpoints for reference and resume."""

    data: str = ""
    out: str = ""
    init: str = ""  # start from this checkpoint's model (its config and weights), fresh optimizer
    epochs: int = 10
    max_steps: int = 0  # 0: no limit
    max_minutes: float = 0.0  # wall-clock budget for this process; 0: no limit
    batch_size: int = 32  # images per batch (each brings all its captions), or captions
    batch_by: str = "image"  # BATCH_BY: batches of images; or of (image, caption) pairs
    lr: float = 4e-4
    encoder_lr: float | None = None  # None: same as lr
    weight_decay: float = 0.0
    grad_clip: float = 5.0
    label_smoothing: float = 0.0  # of the cross-entropy targets (0: the paper's plain -log p)
    objective: str = "xe"  # objectives.OBJECTIVES: the paper's likelihood, or self-critical "scst"
    scst_samples: int = 5  # captions drawn per image by "scst"
    scst_choices: bool = False  # "scst" trains the attention's draws too (hard: its locations)
    select_by: str = "BLEU-4"  # one of SELECT_METRICS: the validation score that keeps
    # best.safetensors, decays the learning rate and stops early
    lr_decay: float = 0.8  # ReduceLROnPlateau factor on that score
    lr_patience: int = 2
    early_stop: int = 6  # epochs without a better validation score
    val_beam_size: int = 1
    val_max_images: int = 0  # 0: the whole validation split
    save_every: int = 200  # steps between "last" checkpoints
    keep_epochs: bool = False  # also keep each epoch's weights (epochN.safetensors)
    seed: int = 0
    amp: bool = False
    num_workers: int = 0
    logdir: str = ""
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        return _from_dict(cls, data)



@dataclass(frozen=True)
class ServeOptions:
    """The HTTP service's limits (``captioner serve``'s flags): concurrent requests are batched
    up to ``max_batch`` images, a batch waiting at most ``max_wait_ms`` for more; an upload over
    ``max_upload_mb`` or a request of more than ``max_images`` images is refused; uploads are
    decoded on ``decode_workers`` threads (0: min(4, cores))."""

    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_upload_mb: float = 20.0
    max_images: int = 16
    decode_workers: int = 0

def _from_dict(cls, data: dict[str, Any]):
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    kwargs = dict(data)
    if cls is ModelConfig and isinstance(kwargs.get("preprocess"), dict):
        kwargs["preprocess"] = Preprocess.from_dict(kwargs["preprocess"])
    return cls(**kwargs)
