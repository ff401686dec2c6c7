"""mqi: a Slurm-native submitter for MOQUI proton Monte Carlo dose QA."""

__version__ = "0.1.0"
