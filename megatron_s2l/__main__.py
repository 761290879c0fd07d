import sys

from megatron_s2l.cli import main

sys.exit(main())
