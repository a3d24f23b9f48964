"""Memory and disk planning before anything runs, and measured peak allocations.
Imports evaluation and every layer below it."""
