"""The WAMP v2 router: authenticated sessions, per-topic authorisation, Redis fan-out."""
