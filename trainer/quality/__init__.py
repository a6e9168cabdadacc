"""How good the generator is, without internet: FID/KID on the features of a classifier
trained locally on the held-out split, digits or an image folder's classes (``classifier``,
``fid``); pixel-statistics KID for label-free images (``pixelkid``); the standard FID on
Inception weights the user has (``inception``, ``--fid-inception``); and the held-out
evaluation the server runs each round (``evaluation``)."""

__all__ = ["evaluation", "fid", "classifier", "pixelkid", "inception"]  # what the rest may import
