"""Distillation phase: a smaller student trained on a teacher's logits (KD / KL / JSD)."""
