"""Model parts: encoders, attention kinds, the decoder and the full captioner."""

from .attention import ATTENTIONS, Attention, AttentionOutput, HardAttention, SoftAttention
from .model import CaptionModel, build_model
from .decoder import Decoder, DecoderOutput, DecoderState, StepOutput
from .encoder import ENCODERS, Encoder, get_backbone

__all__ = ["ATTENTIONS", "Attention", "AttentionOutput", "HardAttention", "SoftAttention",
           "CaptionModel", "build_model", "Decoder", "DecoderOutput", "DecoderState", "StepOutput",
           "ENCODERS", "Encoder", "get_backbone"]
