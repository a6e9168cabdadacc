"""How good the generator is, without internet: FID/KID on a locally trained classifier's
features (``classifier``, ``fid``), pixel-statistics KID for label-free images (``pixelkid``)
and the held-out evaluation the server runs each round (``evaluation``)."""

__all__ = ["evaluation", "fid", "classifier", "pixelkid"]  # what the rest may import
