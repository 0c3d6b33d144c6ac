"""Built-in data sources and loaders for users' files."""
