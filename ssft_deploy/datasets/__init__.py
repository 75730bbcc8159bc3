"""Datasets: records, image reading, the SYSU-MM01 / RegDB layouts and protocols, synthetic data."""

from ssft_deploy.datasets.images import read_image
from ssft_deploy.datasets.records import IR, RGB, ImageRecord

__all__ = ["IR", "RGB", "ImageRecord", "read_image"]
