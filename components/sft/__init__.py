"""SFT phase: chat/instruction data → assistant-only-loss packed rows → full or LoRA fine-tuning."""
