"""`python -m server.cli`: the trtserve command line."""

import sys

from server.cli.main import main

sys.exit(main())
