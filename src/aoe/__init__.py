"""pyaoe: ATA-over-Ethernet target, initiator and protocol lab."""

__version__ = "0.1.0"
