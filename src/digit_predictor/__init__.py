"""Digit Predictor: draw a digit, a CNN names it, PostgreSQL remembers."""

__version__ = "1.0.0"
