"""DVC stage glue: one module per stage reads params, calls relkd, writes outputs and metrics."""
