"""Container images: the Dockerfile and the registry-free local build (devtools/images/build.py)."""
