"""facerco.route."""
