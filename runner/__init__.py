"""runner: a containerized, declarative job-spec runner for long GPU training runs."""

__version__ = "0.1.0"
