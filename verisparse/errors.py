"""The one exception type for errors a user causes and can fix."""


class VeriSparseError(Exception):
    """Bad input (file, option, dataset, model). The CLI prints the message, exits 2."""
