"""A test model whose answers the test chooses: the demo chat model's weights, driven by a
logits processor (`processor.ScriptedLogitsProcessor`) that forces the tokens of a script named in
the prompt (`scripts.SCRIPTS`, selected by `scripts.marker(name)`). vLLM's own parsers then see
real tool-call, reasoning and JSON text, and vllama's translations can be checked for content."""
