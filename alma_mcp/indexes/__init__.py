"""What retrieval and the write path search: the exact in-memory vector index, the BM25 index,
the key-field vectors, and the follower that keeps every index in step with the store."""
