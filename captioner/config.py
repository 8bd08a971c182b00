"""Configuration dataclasses, each value declared once (``fields.option``): its type, default,
bounds or choices and help live on the field, and the flags, the checkpoint checks and the
resume comparison come from there. A checkpoint stores ``ModelConfig`` and ``TrainConfig`` as
JSON, so it describes itself; a bad value is refused when the object is built.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .argtypes import existing_dir, existing_file, output_dir
from .fields import build, check, option
from .registry import ATTENTIONS, ENCODERS, OBJECTIVES

#: the longest caption a model or decoding may be asked for (decoding runs this many steps)
MAX_CAPTION_WORDS = 200
#: the widest beam (and most captions per image) decoding may be asked for: a beam-search
#: step holds B * beam_size rows of the (P, A) attention tensor, so this bounds its memory
MAX_BEAM = 100
SELECT_METRICS = ("BLEU-4", "CIDEr-D")  # scores of the decoded val captions (nltk BLEU-4)
BATCH_BY = ("image", "caption")  # a batch is images with all their captions, or caption pairs
DEEP_OUTPUTS = ("linear", "tanh")  # eq. 7 as printed, or with the tanh of the authors' code


@dataclass
class Preprocess:
    """How an image file becomes the encoder's input tensor.

    The checkpoint and the prepared features both carry this, so training features and
    inference-time captions are computed from exactly the same pixels.
    """

    resize: int = option(64, min=1, max=4096, help="shorter side resized to this (or the "
                         "whole frame squashed to resize x resize when crop is 0)")
    crop: int = option(0, min=0, max=4096, help="centre crop size; 0: no crop")
    mean: tuple[float, float, float] = option((0.485, 0.456, 0.406), help="per-channel mean")
    std: tuple[float, float, float] = option((0.229, 0.224, 0.225), min=0, min_open=True,
                                             help="per-channel standard deviation")

    def __post_init__(self) -> None:
        check(self)

    @property
    def input_size(self) -> int:
        return self.crop or self.resize

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocess":
        """From its JSON form (lists where the dataclass holds tuples)."""
        return build(cls, data)


@dataclass
class ModelConfig:
    """Everything needed to rebuild a captioning model (Xu et al. 2015).

    ``vocab_size`` 0 and ``encoder``, ``grid_size`` and ``preprocess`` None are filled in from
    the data and the encoder when a run starts (``plan.py``, ``build_model``); a checkpoint
    holds the values it trained.
    ``weights=True`` marks what the trained weights fix: a run started from them (``--init``)
    keeps their value."""

    vocab_size: int = option(0, min=0, flag="", weights=True,
                             help="words in the vocabulary, the four special tokens included")
    encoder: str | None = option(None, choices=ENCODERS, metavar="NAME", weights=True,
                                 help="the CNN (default: the prepared features' encoder, "
                                      "else tiny)")
    grid_size: int | None = option(None, min=1, max=64, flag="--grid", metavar="N",
                                   weights=True, help="feature grid side, N x N locations "
                                   "(default: the features', else the encoder's own)")
    pretrained: bool = option(True, flag="", help="start the encoder from ImageNet weights")
    fine_tune_blocks: int | None = option(None, min=-1, flag="--fine-tune", metavar="N",
                                          help="train the encoder's last N blocks (-1: all; "
                                               "default: tiny all, pretrained none)")
    feature_dim: int = option(0, min=0, flag="", weights=True, help="D, from the encoder")
    attention: str = option("soft", choices=ATTENTIONS, weights=True, help="attention kind")
    embed_dim: int = option(256, min=1, max=65536, weights=True, help="word embedding size m")
    hidden_dim: int = option(512, min=1, max=65536, weights=True, help="LSTM size n")
    attention_dim: int = option(256, min=1, max=65536, weights=True,
                                help="attention MLP size")
    dropout: float = option(0.5, min=0, max=1, max_open=True, help="before the output layer")
    max_len: int = option(20, min=1, max=MAX_CAPTION_WORDS, flag="",
                          help="longest caption in words, without <start>/<end> (the data's)")
    alpha_c: float = option(1.0, min=0, help="lambda of the doubly stochastic term, eq. 14")
    gate: bool = option(True, weights=True, help="drop the beta gating scalar (4.2.1)")
    deep_output: str = option("linear", choices=DEEP_OUTPUTS, weights=True,
                              help="eq. 7 as printed (linear) or with the tanh of the authors' "
                                   "code")
    #: the attention kind's options (the fields of its ``Options``), all of them
    attention_options: dict[str, Any] = option(default_factory=dict, flag="",
                                               help="the attention kind's own options")
    preprocess: Preprocess | None = option(None, flag="", weights=True,
                                           help="how an image becomes the encoder's input "
                                                "(None: the encoder's own)")

    def __post_init__(self) -> None:
        check(self)
        options = build(ATTENTIONS.get(self.attention).Options, self.attention_options,
                        "attention_options.")
        self.attention_options = asdict(options)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """From its JSON form; a bad field raises FieldError naming it."""
        if isinstance(data, dict) and any(k.startswith("hard_") for k in data):
            data = _legacy_hard_options(data)
        return build(cls, data)


def _legacy_hard_options(data: dict[str, Any]) -> dict[str, Any]:
    """Checkpoints written before attention kinds owned their options kept hard attention's as
    top-level ``hard_*`` fields; they become ``attention_options``."""
    data = dict(data)
    legacy = {k[len("hard_"):]: data.pop(k) for k in list(data) if k.startswith("hard_")}
    if data.get("attention") == "hard":
        data.setdefault("attention_options", legacy)
    return data


@dataclass
class TrainConfig:
    """How a model is trained; stored in the run's checkpoints for reference and resume.
    ``resume=True`` marks what a resumed run may change (its limits, where its data is);
    any other value given on ``--resume`` must be the run's own."""

    data: str = option("", parse=existing_dir, resume=True,
                       help="prepared folder (`captioner prepare`)")
    out: str = option("", parse=output_dir, required=True, resume=True,
                      help="run folder (checkpoints, metrics.jsonl); one run per folder")
    init: str = option("", parse=existing_file, metavar="CKPT",
                       help="start from this checkpoint's model (its architecture and weights) "
                            "with a fresh optimizer")
    epochs: int = option(10, min=1, resume=True, help="passes over the training data; on "
                         "--resume a smaller value ends the run sooner, a larger extends it")
    max_steps: int = option(0, min=0, resume=True,
                            help="stop after this many steps in all (0: no limit)")
    max_minutes: float = option(0.0, min=0, resume=True,
                                help="stop after this much wall time of this process "
                                     "(0: no limit)")
    batch_size: int = option(32, min=1, help="images (or captions, --batch-by caption) a step")
    batch_by: str = option("image", choices=BATCH_BY, help="a batch is images with all their "
                           "captions, or (image, caption) pairs")
    lr: float = option(4e-4, min=0, min_open=True, help="Adam learning rate")
    encoder_lr: float | None = option(None, min=0, min_open=True,
                                      help="learning rate of the encoder blocks trained "
                                           "(default: --lr)")
    weight_decay: float = option(0.0, min=0, help="on weight matrices only")
    grad_clip: float = option(5.0, min=0, help="gradient norm clip, 0: none")
    label_smoothing: float = option(0.0, min=0, max=1, max_open=True,
                                    help="of the cross-entropy targets (0: the paper's -log p)")
    objective: str = option("xe", choices=OBJECTIVES, help="likelihood (xe) or self-critical "
                            "CIDEr-D (scst)")
    scst_samples: int = option(5, min=2, max=MAX_BEAM, help="captions drawn per image by scst")
    scst_choices: bool = option(False, help="scst rewards the attention's own draws too (hard "
                                "attention samples its locations and REINFORCE trains them "
                                "with the words; default: the words only)")
    select_by: str = option("BLEU-4", choices=SELECT_METRICS, help="val score that keeps "
                            "best.safetensors, decays the lr and stops early")
    lr_decay: float = option(0.8, min=0, max=1, min_open=True, max_open=True,
                             help="lr factor when the val score does not improve")
    lr_patience: int = option(2, min=0, help="epochs without improvement before decaying")
    early_stop: int = option(6, min=1, help="stop after this many epochs without improvement")
    val_beam_size: int = option(1, min=1, max=MAX_BEAM,
                                help="beam size of validation decoding (1: greedy)")
    val_max_images: int = option(0, min=0, help="validate on this many val images (0: all)")
    save_every: int = option(200, min=0, help="steps between last.safetensors saves, 0: at "
                             "epoch ends only")
    keep_epochs: bool = option(False, help="also keep each epoch's weights as "
                               "epochN.safetensors (for `captioner average` or an ensemble)")
    seed: int = option(0, min=0, help="of every random draw of the run")
    amp: bool = option(False, help="bfloat16 mixed precision on CUDA")
    num_workers: int = option(0, min=0, max=64, resume=True, help="data loading processes")
    logdir: str = option("", help="TensorBoard folder (default: none)")
    progress: bool = option(True, resume=True, session=True, help="no progress bar")

    def __post_init__(self) -> None:
        check(self)
        OBJECTIVES.get(self.objective).check(self)  # what the objective refuses

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        return build(cls, data)


@dataclass(frozen=True)
class ServeOptions:
    """The HTTP service (``captioner serve``): where it listens, and its limits. Concurrent
    requests are batched up to ``max_batch`` images, a batch waiting at most ``max_wait_ms``
    for more; an upload over ``max_upload_mb``, a request of more than ``max_images`` images
    or a beam wider than ``max_beam_size`` is refused."""

    host: str = option("127.0.0.1", help="address to bind (this machine only; 0.0.0.0 shares "
                       "it)")
    port: int = option(8000, min=0, max=65535, help="port to listen on, 0: any free one")
    max_upload_mb: float = option(20.0, min=0, max=1024, min_open=True,
                                  help="largest image upload in MB")
    max_images: int = option(16, min=1, max=1024, help="most images in one request")
    max_batch: int = option(16, min=1, max=256, help="most images captioned in one batch")
    max_wait_ms: float = option(5.0, min=0, max=10_000,
                                help="how long a batch waits for more requests")
    max_beam_size: int = option(20, min=1, max=MAX_BEAM, help="the widest beam (and most "
                                "captions per image) a client may ask for")
    decode_workers: int = option(0, min=0, max=64, help="threads decoding uploads (0: "
                                 "min(4, cores))")

    def __post_init__(self) -> None:
        check(self)
