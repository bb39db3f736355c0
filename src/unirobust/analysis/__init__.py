"""unirobust.analysis."""
