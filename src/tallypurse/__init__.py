"""tallypurse: offline-first prepaid-card payment system."""

__version__ = "0.1.0"
