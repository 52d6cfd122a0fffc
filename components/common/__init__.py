"""Helpers shared by every phase: user-facing errors and atomic file writes."""
