"""The seekline DAG (``pipeline.create_pipeline``), its runners (local, Kubeflow) and the CLI."""
