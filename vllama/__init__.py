"""vllama: Ollama's developer experience with vLLM's performance."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vllama")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
