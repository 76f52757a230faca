"""Who is calling: a bearer token verified into an Identity, or an AuthError."""
