"""relkd: multi-perspective CoT teacher -> latent-reasoning student for e-commerce relevance."""

__version__ = "0.1.0"
