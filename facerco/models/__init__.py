"""facerco.models."""
