import sys

from teddy.cli import main

sys.exit(main())
