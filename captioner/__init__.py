"""captioner: Show, Attend and Tell image captioning in plain PyTorch.

Public API::

    from captioner import Captioner, ModelConfig, build_model
    Captioner.load("run/best.safetensors").caption("photo.jpg")
"""

from .config import ModelConfig, Preprocess, TrainConfig
from .inference import Caption, Captioner
from .models.model import build_model

__all__ = ["Caption", "Captioner", "ModelConfig", "Preprocess", "TrainConfig", "build_model"]
__version__ = "0.1.0"
