"""unirobust.evaluation."""
