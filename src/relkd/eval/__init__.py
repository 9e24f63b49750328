"""Evaluation: metrics, significance tests, paper-shaped tables, plots and the probing analysis (pure functions)."""
