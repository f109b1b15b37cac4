"""Training: metrics, plots, augmentation, MLflow tracking (the Ray Train loop lives here too)."""
