"""LightningDataModules for genlit: toy 2-D distributions and image datasets."""
