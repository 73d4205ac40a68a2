"""An order domain to copy from: its history generator, its projections, its application."""
