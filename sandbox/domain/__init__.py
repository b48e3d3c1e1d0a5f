"""The model, the ports and the use cases. Imports nothing from adapters or entrypoints."""
