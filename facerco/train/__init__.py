"""facerco.train."""
