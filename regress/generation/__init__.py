"""The stages of shard generation: rendering batches on the device (`render`), compressing and writing shards
(`compress`), a consumer thread beside its producer (`background`) and where the time went (`timing`);
`regress.generate` wires them."""
