"""Fine-tuning: the classifier head at stage start (LP logreg, random init, rescaling)."""
