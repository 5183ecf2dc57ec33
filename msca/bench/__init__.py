"""Benchmarks (not tests): `python -m msca.bench {model,data,train} [flags]`."""
