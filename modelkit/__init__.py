"""Model code shared by training and serving: model families (NumPy), artifacts, item index, version registry."""
