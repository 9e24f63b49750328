"""Serving: the Triton model repository, the server launcher and the batch-scoring client."""
