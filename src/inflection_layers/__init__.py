"""Where is fine-tuning blocked? Layer-wise attention saturation, gradient suppression and SKI-selected LoRA."""

__version__ = "0.1.0"
