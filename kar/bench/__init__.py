"""Benchmarks behind ``kar bench …``: each writes a JSON result and a plot next to it (see ``kar.bench.report``)."""
