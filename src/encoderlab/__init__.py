"""encoderlab: config-driven text-classification experiments with transformer encoders."""

__version__ = "0.1.0"
