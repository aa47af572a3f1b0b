"""The stages of shard generation: rendering batches on the device (`render`), encoding and writing shards
(`encode`), and running a consumer beside its producer (`background`); `regress.generate` wires them."""
