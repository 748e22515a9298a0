"""Training: LightGBM learning-to-rank (ltr.py) and cross-encoder fine-tuning (cross_encoder.py)."""
