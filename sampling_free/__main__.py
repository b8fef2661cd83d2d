"""``python -m sampling_free ...`` is the ``sampling-free`` command, for environments without the console script."""
import sys

from .cli import main

sys.exit(main())
