"""Answer checkers for the exercises at the end of each notebook, one module per notebook.

Each checker takes the learner's answer, compares it with a value computed from
the data (never a typed-in constant), prints whether it is right with a hint
when it is not, and returns ``True`` or ``False``.
"""
