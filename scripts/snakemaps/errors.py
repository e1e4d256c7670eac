"""Errors raised for bad user input.

A ``UserError`` is a problem the user can fix (a wrong path, a bad value, a
missing column). Its message names the file, key or value at fault and how to
fix it; the step runner prints it without a traceback.
"""


class UserError(Exception):
    """Bad input that the user can fix; the message says what and how."""
