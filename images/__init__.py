"""Container images: the Dockerfile and the registry-free local build (images/build.py)."""
