import sys

from queue_balancer.cli import main

sys.exit(main())
