"""unirobust: accurate and robust classifiers, measured honestly."""

__version__ = "0.1.0"
