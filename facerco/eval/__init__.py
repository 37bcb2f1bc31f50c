"""facerco.eval."""
