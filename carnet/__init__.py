"""carnet — an electronic patient record that a stolen password cannot empty."""

__version__ = "0.1.0"
