"""The failures a user can act on. Every module raises a subclass of JobError for them; `cli.main` turns
any JobError into one line on stderr and exit code 2 (anything else is exit 1). No library module
imports `cli`: the layers point down (jobs -> cli -> the pipelines -> these errors)."""

from __future__ import annotations


class JobError(Exception):
    """A failure the user can act on (a bad flag, conf or input, a lake that lacks something): one line."""


class UsageError(JobError):
    """A bad flag value or a path that does not exist."""


class LakeError(UsageError):
    """A lake that lacks what a job needs (e.g. no tables yet)."""
