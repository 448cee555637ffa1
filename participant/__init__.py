"""A federation participant: model, context vectors, calibration, private upload."""
