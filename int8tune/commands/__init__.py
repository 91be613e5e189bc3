"""The CLI's commands: each turns a typed config into a run, prints its summary and writes its files.
Like cli.py (and unlike the rest of the package) these modules print."""
