"""A tiny engine for engine/zygote.py's tests: run by a warm spare (`python -m vllama.engine.spare
-- python -m tests.zygote_engine.engine`), it starts its children with multiprocessing's `spawn`,
as vLLM does, and prints what they saw."""
