"""Subcommands of ``python -m i0t_helpers``.

Each module listed in :data:`COMMAND_MODULES` defines ``register(subparsers)``,
which adds its parser and sets ``func`` to a callable that takes the parsed
arguments and returns an exit status.
"""

COMMAND_MODULES = [
    "i0t_helpers.commands.gap",
    "i0t_helpers.commands.correlate",
    "i0t_helpers.commands.diagnose",
    "i0t_helpers.commands.encode",
    "i0t_helpers.commands.evaluate",
    "i0t_helpers.commands.train_async",
]
