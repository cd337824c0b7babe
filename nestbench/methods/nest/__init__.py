"""NeST (Neuron Selective Tuning): tune shared updates on probe-selected FFN safety neurons."""

from nestbench.methods.nest.config import NestConfig
from nestbench.methods.nest.method import NestMethod

__all__ = ["NestConfig", "NestMethod"]
