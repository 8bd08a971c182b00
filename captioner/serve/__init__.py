"""The HTTP service and web page: ``create_app(Captioner)``; ``captioner serve`` runs it."""

from .app import create_app
from .model_info import describe_model

__all__ = ["create_app", "describe_model"]
