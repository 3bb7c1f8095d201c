"""Measurement helpers with no stage of their own: FLOP counts of ONNX graphs and the latency timer.
Calibration, engines and the benchmarks all use them; they import none of those packages."""
