"""Data layer: readers, catalog, preprocessing, caching and loading of interaction datasets."""
