"""torchrobust: make a pretrained PyTorch classifier robust, then measure that robustness honestly."""

__version__ = "0.1.0"
