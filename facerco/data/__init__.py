"""facerco.data."""
