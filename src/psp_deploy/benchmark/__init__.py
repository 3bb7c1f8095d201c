"""Benchmarks: latency and throughput per stage, FLOP counts, the machine's own conv rate, the official baseline."""
