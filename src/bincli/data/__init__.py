"""The data steps: the ABID layout and label rule (abid.py, the one place), download from the
public bucket (download.py, fetcher.py, local_store.py, s3.py), split (split.py) and upload (upload.py).

May import: core, config, state, errors, console, progress, layout, lock. Never steps, backends or commands.
"""
