"""The bottom layer: user-facing errors and atomic file writes, shared by configs, model,
components and pipelines. It imports nothing from the project, so any layer may import it."""
