import sys

from zchannels.ops.cli import main

sys.exit(main())
