"""facerco: small, accurate face-recognition models by Route Constrained Optimization (RCO, ICCV 2019)."""

__version__ = "0.1.0"
__all__ = ["__version__"]
