"""decaylab: weight decay done right — exact, fast optimizers, instruments and experiments."""
__version__ = "0.1.0"
