"""Models served elsewhere: peers (other vllama, Ollama, vLLM or OpenAI-compatible servers)."""
