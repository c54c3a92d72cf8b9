"""iprime: PRIME (Process Reinforcement through IMplicit rEwards) for LLM reasoning."""

__version__ = "0.1.0"
