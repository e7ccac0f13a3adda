"""Backend sagemaker: the steps that run on AWS (S3 channels, SageMaker training jobs).

Everything here imports the SageMaker SDK and boto3 lazily, inside the functions that need them.
"""
