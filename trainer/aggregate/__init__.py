"""Combining the clients' discriminators between rounds (``--aggregate``): in the clear
(``combine``) or by secure aggregation, where the server learns only the weighted average
(``secagg``: masks and key agreement, ``secagg_round``: the server's side with dropped
clients, ``secagg_shares``: Shamir shares of the mask keys)."""

__all__ = ["combine", "secagg", "secagg_round"]  # what the rest may import
