"""medlite: lightweight, measured, explainable medical image classifiers.

Nothing heavy is imported here: the edge runner (`python -m medlite.edge`) must work
with only numpy, onnxruntime and Pillow installed.
"""

__version__ = "0.1.0"
