"""Every Python process a test run starts (daemons, CLI commands, fake and real engines) gets
the run's audit hook (vllama_test_audit.py), through this folder on PYTHONPATH."""

import vllama_test_audit

vllama_test_audit.install_from_environment()
