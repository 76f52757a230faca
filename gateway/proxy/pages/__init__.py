"""What a person's browser is answered when the gateway refuses it: HTML pages instead of
problem+json (the challenge interstitial, the block and suspension page)."""
