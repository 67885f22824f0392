"""``python -m mllm4d_lite`` is the same as the ``mllm4d`` command."""

import sys

from mllm4d_lite.cli import main

sys.exit(main())
