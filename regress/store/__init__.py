"""Every on-disk format in one place: atomic files and hashing, `pipe:` commands, shards, shard sets, pairs folders."""
