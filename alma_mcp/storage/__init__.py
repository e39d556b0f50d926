"""Where memories live: the memory store over a storage backend (Chroma, or in memory), the
cross-process write lock, and the audit log. The only code that knows Chroma."""
