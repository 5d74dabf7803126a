"""tinygen: on-device training of int8 CNNs on Cortex-M microcontrollers."""

__version__ = "0.1.0"
