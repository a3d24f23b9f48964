"""Memory and disk planning before anything runs, measured peak allocations, and a study planned
for named hardware: the cheapest setting that fits and its GPU-hours from measured rates.
Imports evaluation and every layer below it."""
