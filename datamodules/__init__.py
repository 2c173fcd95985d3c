"""LightningDataModules for genlit: toy 2-D distributions and image datasets."""

from datamodules.images import (
    CIFAR10,
    MNIST,
    CelebA,
    DatasetNotFoundError,
    Digits,
    FashionMNIST,
    ImageDataModule,
    ImageFolder,
    StackedMNIST,
)
from datamodules.toy import GaussianGrid, GaussianRing, ParallelLines, SwissRoll, ToyDataModule

__all__ = [
    "CIFAR10", "MNIST", "CelebA", "DatasetNotFoundError", "Digits", "FashionMNIST",
    "ImageDataModule", "ImageFolder", "GaussianGrid", "GaussianRing", "ParallelLines",
    "SwissRoll", "ToyDataModule", "StackedMNIST",
]
