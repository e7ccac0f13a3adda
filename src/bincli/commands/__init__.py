"""Typer command functions, one module per group of steps. cli.py registers them."""
