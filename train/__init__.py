"""User-facing steps, each runnable as `python -m train.<step> --help`."""
