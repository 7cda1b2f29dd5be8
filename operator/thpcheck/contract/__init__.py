"""The operator's Kubernetes contract: names, labels and annotations, the views it reads,
the spec it accepts, and the objects it builds. Pure: no I/O, no planning."""
