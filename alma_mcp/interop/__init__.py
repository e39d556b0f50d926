"""Other tools' memory formats: importing them into the service, exporting digests from it."""
