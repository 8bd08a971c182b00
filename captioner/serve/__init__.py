"""The HTTP service and web page: ``create_app(Captioner)``; ``captioner serve`` runs it."""

from .app import HTTP_MAX_BEAM, create_app
from .model_info import describe_model

__all__ = ["HTTP_MAX_BEAM", "create_app", "describe_model"]
