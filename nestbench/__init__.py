"""nestbench: tune a chat model for safety with NeST or a baseline, attack it, and score it."""

__version__ = "0.1.0"
