"""What both backends share: each step as a plain function tests call without Typer.

    train.py     hyperparameters in; the backend trains; report, model.tar.gz and state out
    tune.py      the search, on the backend (capability-checked)
    predict.py   photos -> counts through the backend's runtime client or a model in-process
    evaluate.py  a split's metrics through the endpoint or in-process, same numbers
    report.py    metrics.json, tables and figures of train and evaluate
    leakage.py   a model's training split, so nothing is scored on photos it trained on

May import: backends (get_backend), artifacts, data, core, config, state, errors, console,
progress, layout, hyperparameters. Never commands.
"""
