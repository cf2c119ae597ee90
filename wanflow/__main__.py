import sys

from wanflow.cli import main

sys.exit(main())
