"""Datasets: the registry (array datasets, image-file layouts) and the sources stages read from."""

from teddy.data import datasets, layouts  # noqa: F401 - importing registers every dataset
