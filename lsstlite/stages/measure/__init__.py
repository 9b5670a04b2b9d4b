"""Deblending, measurement, reference band, forced photometry and the object table."""
