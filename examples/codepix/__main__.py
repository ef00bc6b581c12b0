"""``python -m examples.codepix grpc|kafka|all|bank|account|key|demo ...`` (see ``--help``)."""

import sys

from examples.codepix.adapters.cli import main

sys.exit(main())
