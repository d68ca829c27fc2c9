"""Command-line tools and the stage runner: the ``hms`` command, predict, export, presets, seeds.
The top layer: may import every other package."""
