"""Training half of aigi: presets, the detector network, datasets, the offline benchmark, training and evaluation.

Submodules import torch; this package's ``__init__`` does not, so ``import aigi.training`` stays cheap.
"""
