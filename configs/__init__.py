"""YAML presets (package data, so installed images find them too). See pipelines/config.py."""
