"""aigi: detect AI-generated images with a fine-tuned CLIP ViT, served by NVIDIA Triton.

The core package holds the contract every stage shares (labels, preprocessing, checkpoint
metadata, errors) and imports only numpy and Pillow. Heavy stacks live in the subpackages
``aigi.training``, ``aigi.export`` and ``aigi.benchmarks`` and are imported lazily.
"""

__version__ = "0.1.0"
