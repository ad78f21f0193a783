"""medlite's version: its own module, so modules that record it (run markers, stage keys) need not import
the package root (which also offers the Python API lazily)."""

__version__ = "0.1.0"
