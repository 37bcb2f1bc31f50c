"""facerco.prep."""
