import sys

from lbspec.cli import main

sys.exit(main())
