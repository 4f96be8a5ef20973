"""`tlkit audit`: the mislabelled images, near-duplicates, leaks across the split and outliers of
a labelled folder, found before training (run.py: the audit; phash.py: the perceptual hash;
gallery.py: its pictures)."""
from tlkit.audit.run import Audit, audit  # noqa: F401
