"""Models: the SALT student/predictor/teachers (registry) and frozen encoders for inference."""
