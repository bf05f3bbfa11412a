"""Batches: many tasks over git repositories, on this machine or spread over a Ray cluster.

``tasks`` reads the task file; ``execute`` runs one task where it lands and returns what it
made; ``store`` is the driver's ``--out`` (it alone writes there); ``local`` and
``ray_runner`` decide where tasks run; ``board`` shows the batch's progress.
"""

EXIT_HELP = (
    "Exit codes: 0 every task succeeded; 1 some task found no correct candidate or failed; "
    "2 usage or configuration error, or every task failed for a reason you must fix (a missing repository, "
    "an unknown base); 3 the budget ran out; 130, 143, 129 stopped by INT, TERM, HUP."
)
