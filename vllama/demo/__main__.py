"""`python -m vllama.demo MODELS_DIR`: build the tiny demo models (`vllama.demo.build`)."""

import sys

from vllama.demo.build import main

if __name__ == "__main__":
    sys.exit(main())
