"""Data validation phase: schema inference and validation of every split against it (TFDV)."""
