"""The read API for sample sets, where user code imports it:

    from job.readers import ShardDataset, ShardStream, mnist

The datasets live in job/shardsets/readers.py, beside the formats and manifests they read,
and `mnist` (the real digits, read the way the job reads them) in job/data/loading.py; this
module keeps the short import path. Importing it loads torch, the shard formats and the
dataset catalogue, never accelerate, the models or a command.
"""

from job.data.loading import mnist
from job.shardsets.readers import CLASSES, ShardDataset, ShardStream
from job.shardsets.sets import ShardSetInvalid, ShardSetMissing

__all__ = ["CLASSES", "ShardDataset", "ShardSetInvalid", "ShardSetMissing", "ShardStream", "mnist"]
