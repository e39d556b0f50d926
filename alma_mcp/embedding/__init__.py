"""Text to vectors: the embedder interface and its implementations (the bundled model in numpy,
its ONNX Runtime copy, sentence-transformers, a hash embedder for fast tests). Knows nothing of
memories or storage."""
