"""facerco.export."""
