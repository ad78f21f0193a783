"""Using a deployed model: pick the file from a run (`select`), classify files (`predict`), serve a page (`serve`).

Everything here runs the exported file through `medlite.runtime`, never a PyTorch module, and
imports neither torch nor the training stack.
"""
