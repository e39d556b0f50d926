"""Which memories to inject for a task: candidates fused and scored against the floors, the
explanation of a ranking, the floor calibration from feedback, and the Retriever that runs them
over the indexes with its result cache."""
