"""What every part of the job uses: the config schema and its loading (config), the error
types and exit codes (errors), the lines people read (console, progress), where and how a
process runs (runtime, precision, cpu_budget), the model kind registry (kinds), seeds,
the cache folder and SIGTERM handling (preemption). Imports nothing else from job/ at
module level."""
