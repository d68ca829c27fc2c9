"""Evaluation: the table's rows, confusion-matrix scores, costs, pictures, the official cross-check.
Imports models, data, runtime and io."""
