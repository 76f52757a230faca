"""What a fleet of gateways shares through the state store: the changes every gateway must
learn of, published once (audited, shared) and merged by one sync; the grants they consult."""
