"""OpenAI-compatible HTTP serving of a seekline model folder (docs/serving.md).

Layering: serving imports model/ and common/ only (common/layering_test.py's order, serving <- model).
"""
