"""Job kinds: small stateless callables that take a run URI (train, evaluate)."""
