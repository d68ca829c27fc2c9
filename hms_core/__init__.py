"""Hierarchical Multi-Scale Attention (HMS) semantic segmentation.

Library behind the DVC stages in ``stages/``: data preparation on any
Cityscapes-layout root, per-scale DeepLab experts, the transplant into the HMS
model of Tao, Sapra & Catanzaro (2020, arXiv:2005.10821), attention
fine-tuning, and evaluation.
"""

__version__ = "0.1.0"
