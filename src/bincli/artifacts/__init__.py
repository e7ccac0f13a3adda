"""Model artifacts: the core bundle shipped to SageMaker (bundle.py), the ONNX inference graph packaged
with it (export.py), model.tar.gz read and extracted safely (modeltar.py), and a model loaded in this
process (loader.py).

May import: core, errors. Used by steps and both backends.
"""
