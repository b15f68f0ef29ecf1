"""Errors of the API, always as JSON: ``{"error": "<what is wrong>"}``.

A client is a program (the syncer), so every error, down to an unexpected crash,
answers with a small JSON object and the right status, never with an HTML page.
"""

from django.http import JsonResponse


class ApiError(Exception):
    """A request the API refuses; becomes a JSON response with ``status``."""

    def __init__(self, status, message, headers=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error_response(status, message, headers=None):
    response = JsonResponse({"error": message}, status=status)
    for name, value in (headers or {}).items():
        response[name] = value
    return response
