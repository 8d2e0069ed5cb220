"""tuner: a hyperparameter search service for PyTorch fine-tuning, built on Optuna."""

__version__ = "0.1.0"
