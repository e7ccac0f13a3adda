"""The shared core: the ResNet fine-tuning loop, the SageMaker training entry point and the
SageMaker inference handler.

Imports only torch, torchvision, Pillow, numpy and the stdlib, because it runs inside the
SageMaker PyTorch containers where bincli itself is not installed (runtimes.py imports onnxruntime
only inside a function, when it is installed: the container has none). Nothing here may import
from the rest of bincli, and this __init__ imports nothing heavy (the CLI imports core modules).
"""
