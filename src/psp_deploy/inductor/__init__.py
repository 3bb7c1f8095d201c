"""The AOTInductor backend: runs the packages `build --backend inductor` compiles (engines/inductor.py).

The one backend that needs torch, so it lives outside runtime/ (which stays torch-free): the registry names
it by module path and imports it only when it is chosen. It imports the runtime's pieces, never the reverse.
"""
