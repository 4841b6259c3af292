"""``python -m trt_yolact COMMAND ...``, the same as ``trt-yolact COMMAND ...``."""

import sys

from .cli import main

sys.exit(main())
