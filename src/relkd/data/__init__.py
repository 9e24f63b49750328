"""Datasets in one canonical shape: loaders, the embedded catalogue, splits and the validation gate."""
