"""Triton kernels of deltairis, installed as ``deltairis.kernels``.

Import these modules only through :mod:`deltairis.ops`, which checks shapes, dtypes and devices and
falls back to the pure-PyTorch references. Importing this package imports Triton.
"""
