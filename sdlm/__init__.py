"""sdlm-bench: retrofit, decode and evaluate Sequential Diffusion Language Models (arXiv 2509.24007)."""

__version__ = "0.1.0"
