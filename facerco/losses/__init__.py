"""facerco.losses."""
