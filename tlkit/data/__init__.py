"""Data: scanning folders, decoding, the tf.data pipeline, the decoded-image cache, augmentation, the data report."""
