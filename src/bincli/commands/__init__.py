"""The command line, one module per command: typed flags -> config (commands.common.load) -> one
step call -> render the result (stdout with --json, a table on stderr otherwise).

May import: steps, backends (get_backend, for deploy/teardown/upload), config, console, errors.
Nothing heavy at import time: `bincli --help` must not import torch, boto3 or sagemaker.
"""
