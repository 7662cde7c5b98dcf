import sys

from vllama.cli.main import main

sys.exit(main())
