import sys

from vllama.cli import main

sys.exit(main())
