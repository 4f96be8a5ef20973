"""Evaluation: predictions, metrics, the pictures (confusion, top losses, Grad-CAM, filters) and the run's REPORT.md."""
