"""unirobust.experts."""
