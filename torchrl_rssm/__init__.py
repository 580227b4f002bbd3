"""PlaNet-family world-model agents as drop-in TorchRL components."""
__version__ = "0.1.0"
