"""lottery: a toolkit for finding and studying lottery tickets (sparse, trainable subnetworks)."""

__version__ = "0.1.0"
