import sys

from iris.cli import main

sys.exit(main())
