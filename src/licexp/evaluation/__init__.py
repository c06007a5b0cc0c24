"""Evaluation: image-quality metrics, classical codec anchors and results writers."""
