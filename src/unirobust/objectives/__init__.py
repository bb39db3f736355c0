"""unirobust.objectives."""
