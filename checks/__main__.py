"""`python -m checks ...`: see checks/cli.py."""

import sys

from checks.cli import main

sys.exit(main())
