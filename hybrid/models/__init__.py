"""Models: pure TRM/HRM grid models and hybrid recursive heads on Hugging Face backbones.

Importing this package registers the hybrid models with the transformers Auto classes, so
`AutoModelForTokenClassification.from_pretrained(folder)` loads them without `trust_remote_code`.
"""

from hybrid.models import modeling_hybrid  # noqa: F401  (registers the Auto classes)
