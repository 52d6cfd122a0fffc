"""Keras layers of the seekline decoder (TensorFlow backend)."""
