"""`python -m lottery` (and `torchrun -m lottery`) runs the command line."""

import sys

from lottery.cli.main import main

sys.exit(main())
