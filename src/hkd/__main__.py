import sys

from hkd.cli import main

sys.exit(main())
