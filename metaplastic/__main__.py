import sys

from metaplastic.cli.main import main

sys.exit(main())
