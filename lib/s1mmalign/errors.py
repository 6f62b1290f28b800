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


class Stopped(BaseException):
    """The job was asked to stop (SIGINT, SIGTERM): raised in the main thread by stages' signal handler; not an
    Exception, so that no `except Exception` of a library swallows it."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum
