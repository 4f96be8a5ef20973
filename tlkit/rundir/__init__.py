"""The run directory: its files and how to load them (`load`), its lock and unfinished marker (`guard`)."""
