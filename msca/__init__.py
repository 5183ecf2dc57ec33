"""msca: MSCA temporal cross-attention video transformers, trained with DeepSpeed on local, SLURM and Ray."""

__version__ = "0.1.0"
