"""Shard sets, the output of `job sample`: the file formats (formats), what an item is
(layouts), writing the plan, records and manifest (records), reading a finished set back
and checking it (sets), and the PyTorch datasets over it (readers; public as
job.readers). Depends on job.core and job.storage only, so user code can read sets
without loading accelerate, the models or a command."""
