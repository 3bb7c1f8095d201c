"""The runtime Pipeline behind NVIDIA Triton Inference Server (PyTriton), and its client."""
