"""unirobust.engine."""
