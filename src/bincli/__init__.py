"""bincli: count items in Amazon Bin Image Dataset photos, from download to a deployed endpoint."""

__version__ = "0.1.0"
