"""The one exception type that users see.

Every error caused by bad input (files, settings, shapes) is a QnnRepairError whose message is a
single line saying what was wrong and what to do. The CLI prints it and exits non-zero.
"""


class QnnRepairError(ValueError):
    """Bad input: the message says what was wrong and how to fix it."""
