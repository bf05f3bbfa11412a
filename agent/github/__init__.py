"""The GitHub Action, in three steps that never share secrets with pull-request code.

1. gate (``trigger``; holds GITHUB_TOKEN, runs no PR code): reads the webhook event, decides
   whether to run (trigger phrase or label; only actors with write access; no bots by
   default), reads the base branch's settings through the API (``settings``), posts the
   status comment and writes the trigger for the next steps.
2. run (holds the model key, never GITHUB_TOKEN): runs bakeoff on the PR head with the
   workflow's and the base branch's settings, never the PR's (``settings``); the PR's code only
   ever executes inside sandboxes, whose environment is built from an allow-list.
3. deliver (``deliver``; holds GITHUB_TOKEN, runs no PR code): turns the winning patch into a
   review with ``suggestion`` blocks, or a commit on a branch and a draft PR, and finishes the
   status comment (``report``) with the candidate table and the cost.

``client`` is the REST client; everything it posts passes through ``sanitize``. What a patch
may touch is decided by the rules every patch obeys (``bakeoff.agent.path_rules``), on the one
parse of it (``bakeoff.agent.diffs``).
"""
