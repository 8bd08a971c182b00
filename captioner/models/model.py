"""Encoder + decoder, and ``build_model(config)``: the one way a model is made."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ..config import ModelConfig
from .decoder import Decoder, DecoderOutput
from .encoder import Encoder, get_backbone
from .runtime import EncoderRuntime


class CaptionModel(nn.Module):
    """Show, Attend and Tell. ``encode`` maps images to (B, P, D) features; the decoder does the
    rest. Training on precomputed features skips ``encode``."""

    def __init__(self, config: ModelConfig, encoder: Encoder):
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.decoder = Decoder(config)
        self.fast_encoder: EncoderRuntime | None = None  # set by ``Captioner.accelerate``

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised images -> (B, P, D) annotation vectors.

        A frozen encoder's features are rounded to float16, the precision `prepare --features`
        stores, so captions from images and from prepared features are the same.
        """
        encoder = self.fast_encoder if self.fast_encoder is not None else self.encoder
        features = encoder(images)
        return features if self.encoder.trainable else features.half().float()

    def features(self, inputs: torch.Tensor, encoded: bool) -> torch.Tensor:
        """(B, P, D) features of a batch's ``inputs``: themselves when ``encoded`` (prepared
        features), else the encoding of the images (B, 3, S, S)."""
        return inputs if encoded else self.encode(inputs)

    def forward(self, inputs: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor,
                image_index: torch.Tensor | None = None,
                generator: torch.Generator | None = None, encoded: bool = False
                ) -> DecoderOutput:
        """Teacher-forced decoding of ``captions`` (N, L).

        ``inputs`` are images (B, 3, S, S), encoded here, or with ``encoded`` precomputed
        features (B, P, D); ``image_index`` (N,) says which image each caption describes
        (default: one each), so an image is encoded once for all its captions.
        """
        return self.decoder(self.features(inputs, encoded), captions, lengths, generator,
                            image_index)

    def parameter_groups(self, lr: float, encoder_lr: float | None, weight_decay: float
                         ) -> list[dict]:
        """Optimizer groups (nanoGPT's ``configure_optimizers``): the trained parameters of the
        decoder and, at ``encoder_lr`` (default ``lr``), of the encoder; weight decay only on
        weight matrices and convolution kernels, never on biases, norms or embeddings. Without
        weight decay, one group per part."""
        embeddings = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        groups = []
        for part, part_lr in ((self.decoder, lr), (self.encoder, encoder_lr or lr)):
            params = [p for p in part.parameters() if p.requires_grad]
            decay = [p for p in params if p.dim() >= 2 and id(p) not in embeddings]
            rest = [p for p in params if p.dim() < 2 or id(p) in embeddings]
            split = ((decay, weight_decay), (rest, 0.0)) if weight_decay else ((params, 0.0),)
            groups += [{"params": ps, "lr": part_lr, "weight_decay": wd} for ps, wd in split if ps]
        return groups


def build_model(config: ModelConfig, pretrained: bool | None = None) -> CaptionModel:
    """Build the model ``config`` describes; fills in what it leaves to the encoder (the
    encoder itself, ``tiny`` when None; ``grid_size``, ``preprocess``, ``feature_dim``,
    ``fine_tune_blocks``).

    ``pretrained`` overrides ``config.pretrained`` (loading a checkpoint needs no ImageNet
    weights, since the checkpoint has them).
    """
    name = config.encoder or "tiny"
    backbone = get_backbone(name, config.pretrained if pretrained is None else pretrained)
    if config.feature_dim not in (0, backbone.feature_dim):
        raise ValueError(f"config feature_dim {config.feature_dim} does not match encoder "
                         f"{name} ({backbone.feature_dim})")
    trainable = config.fine_tune_blocks
    if trainable is None:
        trainable = -1 if backbone.trainable_by_default else 0
    config = replace(config, encoder=name, grid_size=config.grid_size or backbone.grid_size,
                     feature_dim=backbone.feature_dim, fine_tune_blocks=trainable,
                     preprocess=config.preprocess or backbone.preprocess)
    encoder = Encoder(backbone, config.grid_size, trainable)
    return CaptionModel(config, encoder)
