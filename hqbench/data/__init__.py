"""Datasets and preprocessing; transforms are built from a model's ModelCard."""
