"""The stages of shard generation: rendering batches on the device (`render`), encoding and writing shards
(`encode`), a consumer thread beside its producer (`background`) and where the time went (`timing`);
`regress.generate` wires them."""
