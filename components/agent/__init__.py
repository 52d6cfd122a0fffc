"""Agent distillation: teacher client, agent loop + tools, trajectory segmentation, process-step supervision."""
