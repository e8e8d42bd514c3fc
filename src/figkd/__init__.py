"""figkd: knowledge distillation built around FiGKD (high-frequency logit detail transfer)."""

__version__ = "0.1.0"
