"""Tests of deltairis.ops and the Triton kernels."""
