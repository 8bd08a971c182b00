"""The service's one error type: what a request got wrong, answered as JSON with a status."""

from __future__ import annotations


class RequestError(Exception):
    """A problem with a request: answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message
