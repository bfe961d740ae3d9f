"""Batch image-to-video generation through the Pixazo gateway."""
