"""encoderlab: config-driven text-classification experiments with transformer encoders."""

import time

__version__ = "0.1.0"
STARTED_AT = time.time()  # when the command began: the bench's "time to first training step" counts from here
