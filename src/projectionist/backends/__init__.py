"""Event store backends, one module each; ``projectionist.factory`` picks one by URL."""
