"""What the scheduler refuses with (besides `LoadError`, which the worker raises too)."""

from __future__ import annotations


class ShuttingDown(Exception):
    """The daemon is stopping and takes no new work."""


class QueueFull(Exception):
    """Too many requests are waiting for models already (Ollama's OLLAMA_MAX_QUEUE)."""
