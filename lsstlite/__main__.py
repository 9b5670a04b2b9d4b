import sys

from lsstlite.cli.main import main

sys.exit(main())
