"""Plans that follow the devices: measured speeds and links (``calibrate``, ``fsl
calibrate``), cost tables corrected by what each round measured (``drift``, ``--adapt``) and
the plan without a lost device (``replan``)."""

__all__ = ["calibrate", "drift", "replan"]  # what the rest may import
