"""The one base class of the errors a user can fix; no imports, so the command can catch them without JAX.

Every library error that means "your input is wrong" (a dataset file, a config, a checkpoint, a workdir in
use) derives from `UserError`; `rsground` prints its message as one line and exits with status 2. Anything
else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input (path, config, arguments): reported as one clear line."""


class CheckpointError(UserError, ValueError):
    """A model directory, checkpoint file or prompt file that cannot be loaded (as the given config)."""
